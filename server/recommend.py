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

The estimate reported is the evidence behind that prompt alone, not the model's
extrapolation (the posterior mean is reported beside it), and it leaves out the scores that
selected the prompt:

- a prompt scored in several trials (screened, then promoted to fresh examples) was given
  each later trial *because* its earlier scores ranked high, so those scores are biased
  upward (the winner's curse of the screening); the estimate is its latest trial's value
  alone, the examples scored after the last decision its scores took part in. The mean
  over all its trials is reported beside it (``pooled_estimate``);
- the recommendation is itself the best of ``candidates`` prompts, chosen on those same
  values, so the interval is simultaneous over them (Bonferroni): estimate +/-
  ``z * stderr`` with ``z`` the normal quantile of ``1 - 0.025 / candidates`` (1.96 for
  one candidate, 2.39 for three, 2.81 for ten). It covers the chosen prompt's pool value
  with at least 95% probability whichever candidate is chosen.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch

from promptbo.server.domain import Goal, Prompt, StudySpec, Trial
from promptbo.server.fidelity import pooled

log = logging.getLogger(__name__)

#: Fraction of the best-backed prompt's examples a candidate needs.
CANDIDATE_FRACTION = 0.5
#: The two-sided 95% quantile of the standard normal.
Z95 = 1.959963984540054


def interval_z(candidates: int) -> float:
    """The normal quantile of a 95% interval simultaneous over ``candidates`` (>= 1)."""
    m = max(int(candidates), 1)
    return Z95 if m == 1 else NormalDist().inv_cdf(1.0 - 0.025 / m)


@dataclass(frozen=True)
class Recommendation:
    """See the module docstring; values are in the objective's units (not negated).

    ``trial`` is the prompt's latest trial (by id) and ``trials`` how many it has;
    ``estimate``, ``stderr`` and ``examples`` are the latest trial's when it has several,
    its only trial's otherwise; ``pooled_estimate`` and ``pooled_examples`` its mean over
    every trial; ``candidates`` how many prompts it was chosen among (the interval is
    simultaneous over them)."""

    prompt: Prompt
    trial: Trial
    estimate: float
    stderr: float
    examples: int
    trials: int
    posterior_mean: float
    method: str
    candidates: int = 1
    pooled_estimate: float = math.nan
    pooled_examples: int = 0

    @property
    def z(self) -> float:
        return interval_z(self.candidates)

    @property
    def lower(self) -> float:
        return self.estimate - self.z * self.stderr

    @property
    def upper(self) -> float:
        return self.estimate + self.z * self.stderr


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
        latest, value = max(members, key=lambda m: m[0].id)  # created after every decision
        stats.append((latest, mean, se, n, len(trials), value))
    top_n = max(s[3] for s in stats)
    cand = [i for i, s in enumerate(stats) if s[3] >= CANDIDATE_FRACTION * top_n]
    posterior = _posterior(spec, stats, runtime, sign)
    if posterior is not None:
        best = max(cand, key=lambda i: (float(posterior[i]) * sign, stats[i][3]))
        post_mean, method = float(posterior[best]), "posterior_mean"
    else:
        best = max(cand, key=lambda i: (stats[i][1] * sign, stats[i][3]))
        post_mean, method = stats[best][1], "observed_mean"
    latest, mean, se, n, k, value = stats[best]
    est, est_se, est_n = pooled([latest], [value]) if k > 1 else (mean, se, n)
    return Recommendation(latest.prompt, latest, est, est_se, est_n, k, post_mean, method,
                          candidates=len(cand), pooled_estimate=mean, pooled_examples=n)


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
