"""Suggestion latency vs number of observations, for ``gp`` and ``turbo`` and two references.

Observations are ``n`` random prompts of the planted-prompt problem of
:mod:`synthetic` (``L = 5`` tokens, ``d = 16`` PCA dims: an 80-dimensional box). For each
``n`` the script times

- ``gp`` / ``turbo`` *cold*: the first suggestion of a fresh engine that observed the
  ``n`` results (a full hyperparameter fit from scratch; turbo runs with
  ``failure_tolerance=100000``, see :data:`OPTIONS`);
- ``gp`` / ``turbo`` *warm* (q=1 and q=8): the median of ``--repeats`` further
  suggestions, each after observing the previous one's results (the steady state of a
  running study: warm-started fits, a full refit every ``refit_every`` observations);
- ``botorch naive``: the textbook loop, refit from scratch for every suggestion
  (``SingleTaskGP`` + ``fit_gpytorch_mll`` + ``qLogExpectedImprovement`` +
  ``optimize_acqf(num_restarts=10, raw_samples=512)``, default options), on the same
  box points;
- ``optuna GPSampler``: ``study.ask()`` after the same points were added with
  ``add_trial`` as 80 ``FloatDistribution(0, 1)`` parameters.

    python -m benchmarks.suggest_speed --sizes 50,200,500,1000 --threads 1

prints a markdown table (seconds; ratios of the references to ``gp`` warm q=1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from benchmarks.synthetic import PlantedPrompt, load_table
from promptbo.server.domain import HardPromptSpace
from promptbo.server.optim import make_engine

LENGTH, PCA_DIMS = 5, 16
#: Replaying hundreds of random observations would collapse and restart turbo's trust
#: region, after which it suggests Sobol points without any model; keep one region so
#: that every timed turbo suggestion goes through its (local) GP.
OPTIONS = {"turbo": {"failure_tolerance": "100000"}}


def timed(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds ``fn()`` took on ``clock`` (wall time; ``time.process_time``: CPU time)."""
    start = clock()
    fn()
    return clock() - start


def engine_times(
    strategy: str, table: np.ndarray, n: int, repeats: int, seed: int = 0
) -> tuple[dict[str, float], object]:
    problem = PlantedPrompt(table, LENGTH, seed)
    space = HardPromptSpace(prompt_length=LENGTH, vocabulary_id="bench", pca_dims=PCA_DIMS)
    engine = make_engine(space, strategy, OPTIONS.get(strategy, {}), seed, table)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(table.shape[0], (n, LENGTH), generator=g)
    engine.observe(rows, problem(rows))
    out: dict[str, float] = {}
    holder: dict[str, torch.Tensor] = {}

    def ask(q: int) -> None:
        holder["rows"] = engine.suggest(q)

    out["cold"] = timed(lambda: ask(1))
    engine.observe(holder["rows"], problem(holder["rows"]))
    for q in (1, 8):
        times = []
        for _ in range(repeats):
            times.append(timed(lambda q=q: ask(q)))
            engine.observe(holder["rows"], problem(holder["rows"]))
        out[f"warm q={q}"] = statistics.median(times)
    return out, engine


def naive_botorch(X: torch.Tensor, Y: torch.Tensor) -> float:
    from botorch.acquisition.logei import qLogExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood

    def step() -> None:
        model = SingleTaskGP(X, Y.unsqueeze(-1))
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        acq = qLogExpectedImprovement(model, best_f=Y.max())
        bounds = torch.stack([torch.zeros(X.shape[1]), torch.ones(X.shape[1])]).double()
        optimize_acqf(acq, bounds=bounds, q=1, num_restarts=10, raw_samples=512)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timed(step)


def optuna_gp(X: torch.Tensor, Y: torch.Tensor) -> float:
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {f"x{i}": FloatDistribution(0.0, 1.0) for i in range(X.shape[1])}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.GPSampler(seed=0))
    for x, y in zip(X.tolist(), Y.tolist(), strict=True):
        params = {f"x{i}": v for i, v in enumerate(x)}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, value=float(y))
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timed(lambda: study.ask(dists))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="50,200,500,1000")
    parser.add_argument("--strategies", default="gp,turbo")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-references", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table, source = load_table()
    print(
        f"table: {source}; L={LENGTH}, d={PCA_DIMS} (80-dim box); torch threads="
        f"{torch.get_num_threads()}, CPUs={os.cpu_count()}\n"
    )
    strategies = [s for s in args.strategies.split(",") if s]
    header = ["n"]
    for s in strategies:
        header += [f"{s} cold", f"{s} warm q=1", f"{s} warm q=8"]
    if not args.no_references:
        header += ["botorch naive", "optuna GPSampler", "naive / gp", "optuna / gp"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for n in [int(s) for s in args.sizes.split(",")]:
        row = [str(n)]
        gp_warm = None
        engine = None
        for s in strategies:
            t, eng = engine_times(s, table, n, args.repeats)
            if engine is None:
                engine = eng
            row += [f"{t['cold']:.2f}", f"{t['warm q=1']:.2f}", f"{t['warm q=8']:.2f}"]
            if s == "gp":
                gp_warm = t["warm q=1"]
        if not args.no_references and engine is not None:
            X, Y = engine.X[:n], engine.Y[:n]
            naive = naive_botorch(X, Y)
            opt = optuna_gp(X, Y)
            row += [f"{naive:.2f}", f"{opt:.2f}"]
            if gp_warm:
                row += [f"{naive / gp_warm:.1f}x", f"{opt / gp_warm:.1f}x"]
            else:
                row += ["-", "-"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
