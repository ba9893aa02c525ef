"""promptbo's benchmarks: prompt quality, suggestion speed, service load and reliability.

A repository tool, not part of the installed ``promptbo`` package: run each benchmark as a
module from the repository root, e.g. ``python -m benchmarks.quality --help``; results go
to ``benchmarks/results`` and are discussed in ``docs/benchmarks.md``.

The quality benchmark's parts, which the other prompt-quality benchmarks reuse:

- :mod:`benchmarks.scoring`: task styles, the evaluator of each split, the score cache;
- :mod:`benchmarks.proposers`: the ask/tell search loop, its trace and Optuna's TPE;
- :mod:`benchmarks.selection`: the final pick (best on dev among the objective's top few);
- :mod:`benchmarks.report`: the summary tables and figure;
- :mod:`benchmarks.quality`: the benchmark runner (resumable) and its command line.
"""
