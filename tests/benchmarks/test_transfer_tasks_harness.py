"""The real-task transfer benchmark's harness on fake evaluators: the run order, the
sources read from storage, selection per budget, the outputs and resuming."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import transfer_tasks
from promptbo.evaluators.base import Evaluator
from promptbo.types import PoolTable, Score, VocabularyTable

TASKS = {"sst2": 2, "mr": 2, "subj": 2, "agnews": 4}


def _value(task: str, ids) -> float:
    shift = {"sst2": 0, "mr": 1, "subj": 5, "agnews": 11}[task]
    return -sum(((i + shift) * 7919) % 23 for i in ids) / 10.0


class FakeEvaluator(Evaluator):
    """Deterministic scores per task and split; counts every prompt it scores."""

    def __init__(self, task: str, split: str, seed: int, calls: Counter):
        self.key = (task, split, 0 if split == "test" else seed)
        self.calls = calls
        self.task = SimpleNamespace(examples=[None] * 9)

    def score(self, prompts):
        out = []
        for p in prompts:
            # hard prompts by their token ids, pool candidates ("cand <i>") by their number
            ids = tuple(p.token_ids) or ((int(p.text.split()[-1]),) if p.text else ())
            self.calls[(*self.key, ids)] += 1
            v = _value(self.key[0], ids) + (0.3 if self.key[1] == "dev" else 0.0)
            out.append(Score(v, {"accuracy": 0.5 + (sum(ids) % 40) / 100}))
        return out


def _vocabulary(n: int = 60) -> VocabularyTable:
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = [f" {letters[i % 26]}{letters[(i // 26) % 26]}x" for i in range(n)]
    emb = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    return VocabularyTable(tokens, [1000 + i for i in range(n)], emb)


def _args(tmp_path):
    for task, classes in TASKS.items():
        (tmp_path / task).mkdir(exist_ok=True)
        (tmp_path / task / "meta.json").write_text(
            json.dumps({"labels": [f"c{i}" for i in range(classes)]}))
    return transfer_tasks.parse_args([
        "--data-root", str(tmp_path), "--seeds", "0,1", "--seeds-unrelated", "0",
        "--seeds-multi", "0", "--budget", "6", "--budgets", "3,6", "--prompt-length", "2",
        "--top-n", "30", "--pca-dims", "4", "--db", str(tmp_path / "studies.sqlite"),
        "--log-every", "3",
        "--out", str(tmp_path / "out" / "t")])


def test_transfer_benchmark_runs_in_order_selects_and_resumes(tmp_path):
    calls: Counter = Counter()

    def make_task(task):
        return lambda split, seed: FakeEvaluator(task, split, seed, calls)

    args = _args(tmp_path)
    lines: list[str] = []
    bench = transfer_tasks.Bench(args, {}, make_task, _vocabulary(), lines.append)
    bench.run()
    bench.write(final=True)
    results = bench.results
    assert max(calls.values()) == 1  # each (task, split, seed, prompt) scored once
    vocabulary_ids = set(_vocabulary().token_ids)
    assert all(set(key[-1]) <= vocabulary_ids for key in calls)  # the model's token ids

    started = [line.split()[1 if line.startswith("target") else 2]
               for line in lines if line.startswith(("target ", "source study "))]
    assert started == [
        "source-sst2", "mr-cold-s0", "mr-from-sst2-s0", "mr-cold-s1", "mr-from-sst2-s1",
        "source-agnews", "subj-cold-s0", "subj-from-agnews-s0",
        "source-subj", "mr-from-sst2+subj-s0"]
    assert sorted(results["sources"]) == ["agnews", "sst2", "subj"]
    for key, run in results["runs"].items():
        config = key.split("|")[0]
        assert len(run["values"]) == 6
        want = {"mr<-sst2": {"source-sst2"}, "subj<-agnews": {"source-agnews"},
                "mr<-sst2+subj": {"source-sst2", "source-subj"}}.get(config, set())
        assert set(run["weights"]) == want
        # None: no model yet (a 6-evaluation run may end inside its initial design)
        assert all(w is None or 0 <= w <= 1 for w in run["weights"].values())
        assert set(run["picks"]) == {"3", "6"}
        best6 = max(run["values"])
        assert run["picks"]["6"]["objective"] >= sorted(run["values"])[-3] - 1e-12
        assert run["picks"]["6"]["objective"] <= best6
    weighed = [w for run in results["runs"].values() for w in run["weights"].values()]
    assert any(w is not None for w in weighed)  # some target fitted its ensemble
    summary = results["summary"]
    accs = [results["runs"][f"mr-cold|{s}"]["picks"]["6"]["test_accuracy"] for s in (0, 1)]
    assert summary["mr-cold"]["6"][0] == pytest.approx(np.mean(accs))
    assert summary["mr-cold"]["seeds"] == 2 and summary["subj-cold"]["seeds"] == 1
    md = (tmp_path / "out" / "t.md").read_text()
    assert "| mr<-sst2 | 2 |" in md and "sst2 " in md
    assert (tmp_path / "out" / "t.png").stat().st_size > 0
    saved = json.loads((tmp_path / "out" / "t.json").read_text())
    assert saved["runs"] == json.loads(json.dumps(results["runs"]))

    # Restarting with the saved results and one more seed runs only the new seed's studies.
    calls.clear()
    lines.clear()
    args.seeds = [0, 1, 2]
    again = transfer_tasks.Bench(args, saved, make_task, _vocabulary(), lines.append)
    again.run()
    assert [line for line in lines if line.startswith(("target ", "source study "))] == [
        "target mr-cold-s2", "target mr-from-sst2-s2"]
    assert len(again.results["runs"]) == len(results["runs"]) + 2


def test_configs_selects_the_target_runs(tmp_path):
    args = transfer_tasks.parse_args(["--seeds", "0,1", "--seeds-unrelated", "2",
                                      "--configs", "subj<-agnews,mr-cold"])
    assert [(c.name, s) for c, s in transfer_tasks.schedule(args)] == [
        ("mr-cold", 0), ("mr-cold", 1), ("subj<-agnews", 2)]
    with pytest.raises(SystemExit):
        transfer_tasks.parse_args(["--configs", "mr<-agnews"])


def test_merge_results_joins_runs_of_separate_processes():
    config = {k: 1 for k in transfer_tasks.FIXED}
    a = {"config": config, "runs": {"mr-cold|0": {}}, "scores": {"mr": {"x": 1}},
         "sources": {}, "unprompted": {"mr": {}}, "test_examples": {"mr": 9}}
    b = {"config": config, "runs": {"subj-cold|0": {}}, "scores": {"mr": {"y": 2}},
         "sources": {"agnews": {}}, "unprompted": {}, "test_examples": {}}
    merged = transfer_tasks.merge_results([a, b])
    assert set(merged["runs"]) == {"mr-cold|0", "subj-cold|0"}
    assert merged["scores"] == {"mr": {"x": 1, "y": 2}} and "agnews" in merged["sources"]
    with pytest.raises(ValueError, match="runs in two parts"):
        transfer_tasks.merge_results([a, a])
    with pytest.raises(ValueError, match="other settings"):
        transfer_tasks.merge_results([a, {**b, "config": {**config, "k": 2}}])


def test_merge_parts_can_take_some_configs_of_a_file(tmp_path):
    path = tmp_path / "first.json"
    path.write_text(json.dumps({"runs": {"subj-cold|0": {}, "subj<-agnews|0": {"old": 1}}}))
    assert set(transfer_tasks.read_part(str(path))["runs"]) == {"subj-cold|0",
                                                              "subj<-agnews|0"}
    part = transfer_tasks.read_part(f"{path}=subj-cold+mr-cold")
    assert list(part["runs"]) == ["subj-cold|0"]


def test_pool_space_runs_the_mr_configs_on_one_pool(tmp_path):
    calls: Counter = Counter()

    def make_task(task):
        return lambda split, seed: FakeEvaluator(task, split, seed, calls)

    args = _args(tmp_path)
    pool_args = transfer_tasks.parse_args([
        "--data-root", str(tmp_path), "--seeds", "0,1", "--budget", "8", "--budgets", "4,8",
        "--db", str(tmp_path / "pool.sqlite"), "--space", "pool", "--strategy", "zopo",
        "--out", str(tmp_path / "out" / "p")])
    assert pool_args.configs == ["mr-cold", "mr<-sst2"]
    assert transfer_tasks.fixed_config(pool_args)["strategy"] == "zopo"
    assert "strategy" not in transfer_tasks.fixed_config(args)
    texts = [f"Instruction cand {i}" for i in range(30)]
    table = PoolTable(texts, np.random.default_rng(1).standard_normal((30, 6))
                      .astype(np.float32), "test-enc")
    bench = transfer_tasks.Bench(pool_args, {}, make_task, _vocabulary(), print, table)
    bench.run()
    bench.write(final=True)
    results = bench.results
    assert max(calls.values()) == 1
    assert sorted(results["runs"]) == ["mr-cold|0", "mr-cold|1", "mr<-sst2|0", "mr<-sst2|1"]
    source = results["sources"]["sst2"]
    assert all(len(p) == 1 and 0 <= p[0] < 30 for p in source["prompts"])
    assert source["best_text"] in texts
    # transfer by initialization: the source's best candidate is the target's first trial
    best = source["prompts"][int(np.argmax(source["values"]))]
    for seed in (0, 1):
        assert results["runs"][f"mr<-sst2|{seed}"]["prompts"][0] == best
        assert results["runs"][f"mr<-sst2|{seed}"]["weights"] == {"source-sst2": None}
    md = (tmp_path / "out" / "p.md").read_text()
    assert "| mr<-sst2 | 2 |" in md and "sst2 (init only)" in md


def test_per_task_pools_transfer_between_pools_by_embedding(tmp_path):
    """``--pools per-task``: SUBJ's studies on SUBJ's pool start from the candidates
    nearest AG News's best ones (another pool, the same embedding model)."""
    calls: Counter = Counter()

    def make_task(task):
        return lambda split, seed: FakeEvaluator(task, split, seed, calls)

    _args(tmp_path)
    with pytest.raises(SystemExit):  # the shared sentiment pool cannot serve SUBJ
        transfer_tasks.parse_args(["--space", "pool", "--configs", "subj<-agnews"])
    args = transfer_tasks.parse_args([
        "--data-root", str(tmp_path), "--seeds-unrelated", "0", "--budget", "8",
        "--budgets", "4,8", "--db", str(tmp_path / "per-task.sqlite"), "--space", "pool",
        "--pools", "per-task", "--configs", "subj-cold,subj<-agnews",
        "--out", str(tmp_path / "out" / "q")])
    assert transfer_tasks.fixed_config(args)["pools"] == "per-task"
    rng = np.random.default_rng(2)
    agnews_emb = rng.standard_normal((20, 6)).astype(np.float32)
    subj_emb = rng.standard_normal((25, 6)).astype(np.float32)
    subj_emb[:20] = agnews_emb + 0.01  # subj candidate i lies next to agnews candidate i
    pools = {"agnews": PoolTable([f"News cand {i}" for i in range(20)], agnews_emb, "enc"),
             "subj": PoolTable([f"Opinion cand {i}" for i in range(25)], subj_emb, "enc")}
    bench = transfer_tasks.Bench(args, {}, make_task, _vocabulary(), print, pools=pools)
    bench.run()
    bench.write(final=True)
    results = bench.results
    assert sorted(results["runs"]) == ["subj-cold|0", "subj<-agnews|0"]
    source = results["sources"]["agnews"]
    assert source["best_text"].startswith("News cand")
    best = source["prompts"][int(np.argmax(source["values"]))]
    run = results["runs"]["subj<-agnews|0"]
    assert run["prompts"][0] == best  # SUBJ's candidate next to AG News's best
    assert all(0 <= p[0] < 25 for p in run["prompts"])
    assert run["picks"]["8"]["text"].startswith("Opinion cand")
    assert set(run["weights"]) == {"source-agnews"}
