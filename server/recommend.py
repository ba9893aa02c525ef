"""The prompt a study recommends, and how much to trust it.

Under noise the best *observed* trial is a biased pick: among many prompts scored on a few
examples the top value is mostly luck. The recommendation is instead:

1. every completed trial's objective (``value`` or the objective metric) is pooled per
   prompt over all the examples it was scored on (a prompt re-scored on fresh examples
   has one pooled estimate, see :func:`promptbo.server.fidelity.pooled`);
2. the candidates are the prompts backed by at least half as many examples as the
   best-backed prompt (the highest fidelity reached: for a study without a pool every
   prompt qualifies);
3. when the study's engine works in a unit box and standard errors were told, a GP with
   each prompt's own noise variance (:mod:`promptbo.server.optim.noisy_gp`) is fitted on
   every evaluated prompt and the candidate with the best posterior mean is recommended
   (method ``posterior_mean``); otherwise the candidate with the best pooled estimate
   (method ``observed_mean``).

The estimate reported is the recommended prompt's pooled mean over its examples, with a
95% interval of +/- 1.96 standard errors: the evidence behind that prompt alone, not the
model's extrapolation (the posterior mean is reported beside it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from promptbo.server.domain import Goal, Prompt, StudySpec, Trial
from promptbo.server.fidelity import pooled

log = logging.getLogger(__name__)

#: Fraction of the best-backed prompt's examples a candidate needs.
CANDIDATE_FRACTION = 0.5
#: The two-sided 95% quantile of the standard normal.
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Recommendation:
    """See the module docstring; values are in the objective's units (not negated)."""

    prompt: Prompt
    trial: Trial
    estimate: float
    stderr: float
    examples: int
    trials: int
    posterior_mean: float
    method: str

    @property
    def lower(self) -> float:
        return self.estimate - Z95 * self.stderr

    @property
    def upper(self) -> float:
        return self.estimate + Z95 * self.stderr


def objective_of(spec: StudySpec, t: Trial) -> float | None:
    if spec.objective in ("", "value"):
        return t.value
    return t.metrics.get(spec.objective)


def recommend(spec: StudySpec, completed: Sequence[Trial], runtime=None) -> Recommendation | None:
    """The recommendation among ``completed`` trials (references excluded by the caller);
    ``runtime`` (a :class:`~promptbo.server.runtime.StudyRuntime`) supplies the encoding
    for the posterior. None when no trial has the objective."""
    groups: dict[tuple, list[tuple[Trial, float]]] = {}
    for t in completed:
        v = objective_of(spec, t)
        if v is not None and math.isfinite(v):
            groups.setdefault(t.prompt.key(), []).append((t, float(v)))
    if not groups:
        return None
    sign = -1.0 if spec.goal is Goal.MINIMIZE else 1.0
    stats = []
    for members in groups.values():
        trials = [t for t, _ in members]
        mean, se, n = pooled(trials, [v for _, v in members])
        latest = max(trials, key=lambda t: (t.complete_time, t.id))
        stats.append((latest, mean, se, n, len(trials)))
    top_n = max(s[3] for s in stats)
    cand = [i for i, s in enumerate(stats) if s[3] >= CANDIDATE_FRACTION * top_n]
    posterior = _posterior(spec, stats, runtime, sign)
    if posterior is not None:
        best = max(cand, key=lambda i: (float(posterior[i]) * sign, stats[i][3]))
        post_mean, method = float(posterior[best]), "posterior_mean"
    else:
        best = max(cand, key=lambda i: (stats[i][1] * sign, stats[i][3]))
        post_mean, method = stats[best][1], "observed_mean"
    latest, mean, se, n, k = stats[best]
    return Recommendation(latest.prompt, latest, mean, se, n, k, post_mean, method)


def _posterior(spec: StudySpec, stats: list, runtime, sign: float) -> torch.Tensor | None:
    """Posterior means (objective units) at every pooled prompt, or None without a model."""
    box = getattr(getattr(runtime, "engine", None), "box", None)
    if box is None or len(stats) < 3 or not any(s[2] > 0 for s in stats):
        return None
    from promptbo.server.optim.noisy_gp import fit_fixed_noise_gp, noise_floor, posterior_mean_sd

    try:
        X = box.to_unit(runtime.encode([s[0].prompt for s in stats]))
        y = torch.tensor([s[1] * sign for s in stats], dtype=torch.float64)
        var = torch.tensor([s[2] ** 2 if s[2] > 0 else math.nan for s in stats],
                           dtype=torch.float64)
        n = torch.tensor([s[3] for s in stats], dtype=torch.float64)
        model = fit_fixed_noise_gp(X, y, noise_floor(var, n, y))
        mean, _ = posterior_mean_sd(model, X)
    except Exception as exc:  # a recommendation must not fail on a numerical corner
        log.warning("posterior for the recommendation failed (%s); ranking by estimates", exc)
        return None
    return mean * sign
