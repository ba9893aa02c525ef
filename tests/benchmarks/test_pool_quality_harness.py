"""The pool-quality benchmark's harness on a fake evaluator: passes, selection, the
persistent score cache and resuming."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np

from benchmarks.pool_quality import PoolBenchmark, load_store, render
from benchmarks.scoring import ScoreCache
from benchmarks.selection import select_prompt
from promptbo.evaluators.base import Evaluator
from promptbo.types import Prompt, Score

N = 40


def _value(i: int, split: str) -> float:
    if i < 0:
        return -1.0
    return -abs(i - 17) / 10.0 + (0.05 * ((i * 7) % 5) if split == "dev" else 0.0)


class FakeEvaluator(Evaluator):
    def __init__(self, split: str, seed: int, calls: Counter):
        self.split, self.seed, self.calls = split, seed, calls

    def score(self, prompts):
        out = []
        for p in prompts:
            i = int(p.text.split()[1]) if p.text else -1
            self.calls[self.split, self.seed, i] += 1
            acc = 0.5 + (i % 10) / 20 if self.split == "test" else 0.5
            out.append(Score(_value(i, self.split) + 0.01 * self.seed, {"accuracy": acc}))
        return out


def _bench(tmp_path, calls, store, results=None, strategies=("zopo", "random")):
    table = SimpleNamespace(texts=[f"candidate {i}" for i in range(N)],
                            embeddings=np.random.default_rng(0).standard_normal((N, 6)))
    args = SimpleNamespace(budgets=[4, 8], passes=[4, 8], seeds=[0, 1],
                           strategies=list(strategies), top_k=3, log_every=4,
                           out=str(tmp_path / "pq"), limit_test=7, data_dir="d")

    def prompt_of(key):
        return Prompt(text=table.texts[key[0]] if key else "")

    cache = ScoreCache(lambda split, seed: FakeEvaluator(split, seed, calls), prompt_of, store)
    results = results or {"runs": {}, "selections": {}, "unprompted": {},
                          "fingerprint": {"pool": "fake"}, "pool_size": N}
    return PoolBenchmark(args, table, cache, results, log=lambda msg: None)


def test_runs_in_passes_selects_on_dev_and_resumes_without_rescoring(tmp_path):
    calls: Counter = Counter()
    bench = _bench(tmp_path, calls, {})
    bench.run()
    bench.write()
    assert all(n == 1 for n in calls.values())  # each (split, seed, candidate) once
    res = json.loads((tmp_path / "pq.json").read_text())
    for name, run in res["runs"].items():
        assert len(run["values"]) == 8
        strategy, seed = name.split("|")
        for b in (4, 8):
            sel = res["selections"][f"{name}|{b}"]
            keys = [tuple(r) for r in run["rows"]]
            want = select_prompt(keys, run["values"], b,
                                 lambda ps, s=int(seed): [_value(p[0], "dev") + 0.01 * s
                                                          for p in ps])
            assert sel["prompt"] == want["prompt"]
            assert sel["test_accuracy"] == 0.5 + (want["prompt"][0] % 10) / 20
    assert set(res["summary"]["table"]) == {"zopo", "random"}

    # A later session with the stored scores and results scores nothing again, and a
    # strategy added later reuses the candidates the others scored.
    store = load_store(tmp_path / "pq.scores.json", {"pool": "fake"})
    again: Counter = Counter()
    bench = _bench(tmp_path, again, store, results=res)
    bench.run()
    assert not again
    before = set(store)
    more = _bench(tmp_path, again, store, results=res, strategies=("zopo", "random", "gp"))
    more.run()
    assert set(more.results["runs"]) == {f"{s}|{seed}" for s in ("zopo", "random", "gp")
                                         for seed in (0, 1)}
    assert again and all(n == 1 for n in again.values())
    assert not {ScoreCache.key(split, seed, (i,)) for split, seed, i in again} & before


def test_report_renders_the_cells_of_the_given_seeds_and_budgets(tmp_path):
    bench = _bench(tmp_path, Counter(), {})
    bench.run()
    bench.write()
    res = json.loads((tmp_path / "pq.json").read_text())
    args = SimpleNamespace(**{**vars(bench.args), "seeds": [0], "budgets": [4]})
    render(res, args)
    table = json.loads((tmp_path / "pq.json").read_text())["summary"]["table"]
    assert {s: list(row) for s, row in table.items()} == {"zopo": ["4"], "random": ["4"]}
    assert table["zopo"]["4"]["seeds"] == 1
    assert "b=8" not in (tmp_path / "pq.md").read_text()
