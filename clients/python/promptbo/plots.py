"""Convergence plots of a study (needs matplotlib: ``pip install matplotlib``).

:func:`plot_study` draws every completed trial's objective against its trial id and the
best so far as a line, and writes a PNG.
"""

from __future__ import annotations

from promptbo.client import Study
from promptbo.errors import FailedPreconditionError
from promptbo.v1 import resources_pb2 as pb


def plot_study(study: Study, path: str) -> int:
    """Writes ``study``'s convergence plot to ``path``; returns the completed trials drawn.

    Raises:
        FailedPreconditionError: matplotlib is missing, or no trial has completed.
    """
    try:
        import matplotlib
    except ImportError:
        raise FailedPreconditionError(
            "study plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = study.info.spec
    objective = spec.objective or "value"
    minimize = spec.goal == pb.GOAL_MINIMIZE
    points = []
    for t in study.trials(state="completed"):
        y = t.value if objective == "value" else t.metrics.get(objective)
        if y is not None:
            points.append((t.id, y))
    if not points:
        raise FailedPreconditionError(
            f"study {study.name!r} has no completed trial with its objective to plot yet")
    best, run = [], None
    for _, y in points:
        run = y if run is None else (min(run, y) if minimize else max(run, y))
        best.append(run)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([i for i, _ in points], [y for _, y in points], ".", alpha=0.4, label="trial")
    ax.step([i for i, _ in points], best, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective + (" (lower is better)" if minimize else ""))
    ax.set_title(study.name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return len(points)
