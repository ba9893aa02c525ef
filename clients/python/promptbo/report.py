"""Plain-text lines about a study's recommendation, for the CLI, the worker and the demo.

:func:`recommendation_lines` renders :meth:`promptbo.client.Study.recommendation`: the
recommended prompt with its estimate, 95% interval and the examples behind it, the best
observed trial beside it, and the unprompted model's reference score with a plain verdict
(whether the recommendation's interval lies above, below, or around the reference).
"""

from __future__ import annotations

from promptbo.client import Recommendation, Trial


def prompt_label(trial: Trial) -> str:
    p = trial.prompt
    if p.vector is not None:
        return f"<soft {tuple(p.vector.shape)}>"
    return repr(p.text)


def _backing(trial: Trial) -> str:
    n = trial.examples_scored
    se = trial.value_stderr
    if not n:
        return ""
    return f" on {n} examples" + ("" if se is None else f" (+/- {1.96 * se:.4f})")


def objective_value(trial: Trial, objective: str = "value") -> float | None:
    """A trial's objective: its value, or the objective metric."""
    return trial.value if objective in ("", "value") else trial.metrics.get(objective)


def verdict(rec: Recommendation, minimize: bool = False, objective: str = "value") -> str:
    """Whether the recommendation beats the unprompted reference, in words."""
    ref = rec.reference
    ref_value = None if ref is None else objective_value(ref, objective)
    if rec.trial is None or ref_value is None:
        return ""
    sign = -1.0 if minimize else 1.0
    lo, hi = (rec.lower, rec.upper) if not minimize else (-rec.upper, -rec.lower)
    r = sign * ref_value
    if rec.stderr > 0 and lo > r:
        return "the recommended prompt beats the unprompted model (interval above it)"
    if rec.stderr > 0 and hi < r:
        return "the unprompted model scores better than the recommended prompt"
    if rec.stderr > 0:
        return "no clear difference from the unprompted model (its score is inside the interval)"
    better = sign * rec.estimate > r
    return ("the recommended prompt scores above" if better else
            "the recommended prompt does not score above") + " the unprompted model"


def recommendation_lines(
    rec: Recommendation, minimize: bool = False, objective: str = "value"
) -> list[str]:
    """The recommendation, the best observed trial and the reference, one per line
    (``objective``: the study's objective, ``value`` or a metric name)."""
    if rec.trial is None:
        return ["no completed trial yet"]
    t = rec.trial
    among = f", among {rec.candidates} prompts" if rec.candidates > 1 else ""
    if rec.trials > 1:
        basis = (f"on the {rec.examples} examples of its latest trial (all {rec.trials} "
                 f"trials: {rec.pooled_estimate:.4f} on {rec.pooled_examples})")
    else:
        basis = f"on {rec.examples} examples"
    lines = [
        f"recommended: trial {t.id} {prompt_label(t)}: {rec.estimate:.4f} "
        f"[{rec.lower:.4f}, {rec.upper:.4f}] (95%{among}) {basis}, "
        f"by {rec.method.replace('_', ' ')}"
        + (f" {rec.posterior_mean:.4f}" if rec.method == "posterior_mean" else "")
    ]
    b = rec.best_observed
    if b is not None and b.value is not None:
        lines.append(f"best observed: trial {b.id} {prompt_label(b)}: {b.value:.4f}{_backing(b)}")
    ref = rec.reference
    ref_value = None if ref is None else objective_value(ref, objective)
    if ref is not None and ref_value is not None:
        lines.append(f"unprompted (reference): {ref_value:.4f}{_backing(ref)}")
        lines.append(verdict(rec, minimize, objective))
    return lines
