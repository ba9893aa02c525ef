"""The quality benchmark's harness on fake evaluators: selection, score caching, resuming.

Selections are checked against picks worked out by hand on small traces, not recomputed."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import holdout, quality
from benchmarks.proposers import TPEProposer, Trace, optimize
from benchmarks.scoring import ScoreCache
from benchmarks.selection import ranked_prompts, select_prompt
from promptbo.evaluators.base import Evaluator
from promptbo.types import Score, VocabularyTable


def _objective(ids) -> float:
    return -sum((i * 7919) % 23 for i in ids) / 10.0


def _dev(ids) -> float:
    return _objective(ids) + sum((i * 104729) % 17 for i in ids) / 20.0


def _test_accuracy(ids) -> float:
    return 0.5 + ((sum(ids) * 31) % 50) / 100.0


class FakeEvaluator(Evaluator):
    """Deterministic per-split scores; counts every prompt it is asked to score."""

    def __init__(self, split: str, seed: int, calls: Counter):
        self.split, self.seed, self.calls = split, seed, calls
        self.task = SimpleNamespace(examples=[None] * 7)

    def score(self, prompts):
        out = []
        for p in prompts:
            ids = tuple(p.token_ids)
            self.calls[self.split, self.seed if self.split != "test" else 0, ids] += 1
            value = {"objective": _objective, "dev": _dev}.get(self.split, _objective)(ids)
            acc = _test_accuracy(ids) if self.split == "test" else 0.5
            out.append(Score(value + 0.01 * self.seed, {"accuracy": acc}))
        return out


def _vocabulary(n: int = 80) -> VocabularyTable:
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = [f" {letters[i % 26]}{letters[(i // 26) % 26]}x" for i in range(n)]
    tokens[:3] = ["!", "##", " a"]  # not whole words: filtered out
    emb = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    return VocabularyTable(tokens, [1000 + i for i in range(n)], emb)


def test_select_prompt_takes_the_dev_best_of_the_objective_top_k():
    prompts = [(1,), (2,), (3,), (2,), (4,), (5,)]
    values = [0.1, 0.5, 0.4, 0.5, 0.3, 0.9]
    dev = {(1,): 0.0, (2,): 0.2, (3,): 0.7, (4,): 0.9, (5,): 1.0}
    asked = []

    def dev_values(ps):
        asked.append(list(ps))
        return [dev[p] for p in ps]

    sel = select_prompt(prompts, values, budget=5, dev_values=dev_values, top_k=3)
    # (5,) lies beyond the budget; (2,) counts once; top-3 by objective: (2,), (3,), (4,).
    assert asked == [[(2,), (3,), (4,)]]
    assert sel["prompt"] == [4] and sel["objective"] == 0.3 and sel["dev"] == 0.9
    # A dev tie goes to the better objective.
    sel = select_prompt(prompts, values, 5, lambda ps: [1.0] * len(ps), top_k=3)
    assert sel["prompt"] == [2]


def test_ranked_prompts_keeps_first_evaluations_within_the_budget():
    prompts = [(7,), (3,), (7,), (9,), (3,), (8,)]
    values = [0.2, 0.6, 0.9, 0.6, 0.1, 1.0]
    # (7,) keeps its first value 0.2; (3,) and (9,) tie at 0.6: the earlier (3,) first.
    assert ranked_prompts(prompts, values, budget=5) == [((3,), 0.6), ((9,), 0.6), ((7,), 0.2)]
    assert ranked_prompts(prompts, values, budget=2) == [((3,), 0.6), ((7,), 0.2)]


class TableEvaluator(Evaluator):
    """Scores from hand-written tables keyed by token ids (0.0 and accuracy 0.5 elsewhere);
    records what each split was asked to score."""

    def __init__(self, split: str, tables: dict[str, dict[tuple, float]], asked: dict):
        self.split, self.tables, self.asked = split, tables, asked
        self.task = SimpleNamespace(examples=[None] * 5)

    def score(self, prompts):
        out = []
        for p in prompts:
            ids = tuple(p.token_ids)
            self.asked.setdefault(self.split, set()).add(ids)
            value = self.tables.get(self.split, {}).get(ids, 0.0)
            acc = self.tables.get("accuracy", {}).get(ids, 0.5) if self.split == "test" else 0.5
            out.append(Score(value, {"accuracy": acc}))
        return out


def test_benchmark_picks_the_hand_worked_prompts_from_stored_traces(tmp_path):
    """Five prompts (vocabulary rows -> token ids 1000 + row), two finished traces; the
    picks at budgets 4 and 6 (top 3 by objective, then best on dev) are worked out below."""
    a, b, c, d, e, f = (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)
    obj = {a: 0.1, b: 0.5, c: 0.4, d: 0.3, e: 0.9, f: 0.2}
    dev = {a: 0.6, b: 0.2, c: 0.5, d: 0.95, e: 0.8, f: 0.1}
    accuracy = {a: 0.61, c: 0.72, e: 0.83}
    traces = {0: [a, b, c, b, d, e], 1: [f, c, a, b, e, d]}

    def ids(rows):
        return tuple(1000 + r for r in rows)

    tables = {"dev": {ids(k): v for k, v in dev.items()},
              "accuracy": {ids(k): v for k, v in accuracy.items()}}
    args = _args(tmp_path, "random", budgets="4,6")
    stored = {"scores": {}, "selections": {}, "unprompted": {}, "runs": {
        f"random|{seed}": Trace(rows=[list(r) for r in rows], values=[obj[r] for r in rows],
                                accuracy=[0.5] * 6).to_json() for seed, rows in traces.items()}}
    asked: dict = {}
    bench = quality.Benchmark(args, lambda split, seed: TableEvaluator(split, tables, asked),
                              _vocabulary(), results=stored, log=lambda _: None)
    results = bench.run()
    picks = {name: (tuple(sel["prompt"]), sel["objective"], sel["dev"], sel["test_accuracy"])
             for name, sel in results["selections"].items()}
    # seed 0, b=4: b, c, a (b's repeat counts once) -> dev 0.2, 0.5, 0.6 -> a.
    # seed 0, b=6: e, b, c -> dev 0.8, 0.2, 0.5 -> e (d, best on dev, is 4th by objective).
    # seed 1, b=4: b, c, f -> dev 0.2, 0.5, 0.1 -> c.   seed 1, b=6: e, b, c -> e.
    assert picks == {
        "random|0|4": (ids(a), 0.1, 0.6, 0.61), "random|0|6": (ids(e), 0.9, 0.8, 0.83),
        "random|1|4": (ids(c), 0.4, 0.5, 0.72), "random|1|6": (ids(e), 0.9, 0.8, 0.83)}
    assert results["selections"]["random|0|4"]["candidates"] == [
        {"prompt": list(ids(b)), "objective": 0.5, "dev": 0.2},
        {"prompt": list(ids(c)), "objective": 0.4, "dev": 0.5},
        {"prompt": list(ids(a)), "objective": 0.1, "dev": 0.6}]
    assert ids(d) not in asked["dev"]  # never among the top 3
    assert asked["test"] == {(), ids(a), ids(c), ids(e)}  # the picks and the unprompted model
    assert asked["objective"] == {()}  # only the unprompted model: the traces are not rescored
    table = results["summary"]["table"]["random"]
    assert table["4"] == pytest.approx({"test_accuracy": 0.665, "test_accuracy_std": 0.11 / 2**0.5,
                                        "best_objective": 0.5, "best_objective_std": 0.0,
                                        "seeds": 2})
    assert table["6"]["test_accuracy"] == pytest.approx(0.83)
    assert table["6"]["best_objective"] == pytest.approx(0.9)
    bench.write()
    assert "| random | 66.5 ± 7.8 | 0.500 | 83.0 ± 0.0 | 0.900 |" in (tmp_path / "q.md").read_text()


def test_score_cache_scores_each_split_seed_prompt_once():
    calls: Counter = Counter()
    cache = ScoreCache(lambda split, seed: FakeEvaluator(split, seed, calls),
                               _vocabulary())
    a, b = (1010, 1011), (1012, 1013)
    first = cache.score("objective", 0, [a, b, a])
    assert first[0] == first[2] and first[0][0] == pytest.approx(_objective(a))
    assert cache.score("objective", 0, [b, a]) == [first[1], first[0]]
    cache.score("objective", 1, [a])  # another seed: another objective set
    cache.score("test", 0, [a])
    cache.score("test", 2, [a])  # the test split is shared by all seeds
    assert max(calls.values()) == 1
    assert cache.evaluated == Counter({"objective": 3, "test": 1})
    assert cache.prompt(a).text == " kax lax"


def _args(tmp_path, strategies, budgets="4,10", seeds="0,1"):
    return quality.parse_args([
        "--data-dir", "fake", "--budgets", budgets, "--seeds", seeds, "--strategies",
        strategies, "--prompt-length", "2", "--top-n", "40", "--pca-dims", "4",
        "--out", str(tmp_path / "q"), "--log-every", "5"])


def test_benchmark_run_selects_caches_and_resumes(tmp_path):
    calls: Counter = Counter()
    vocab = _vocabulary()
    args = _args(tmp_path, "random,optuna-tpe")
    lines = []
    bench = quality.Benchmark(args, lambda s, seed: FakeEvaluator(s, seed, calls), vocab,
                              log=lines.append)
    results = bench.run()
    bench.write(final=True)
    assert max(calls.values()) == 1  # nothing was scored twice on a split
    allowed = {1000 + i for i in range(3, 80)}
    for name, run in results["runs"].items():
        assert len(run["values"]) == 10
        keys = [tuple(1000 + r for r in rows) for rows in run["rows"]]
        assert all(set(k) <= allowed for k in keys)
        seed = int(name.split("|")[1])
        for b in (4, 10):
            # Which prompt wins is checked by hand on fixed traces (below); here: each
            # pick was evaluated within its budget and carries its own dev and test scores.
            sel = results["selections"][f"{name}|{b}"]
            pick = tuple(sel["prompt"])
            assert pick in keys[:b] and len(sel["candidates"]) == 3
            assert sel["dev"] == pytest.approx(_dev(pick) + 0.01 * seed)
            assert sel["dev"] == max(c["dev"] for c in sel["candidates"])
            assert sel["test_accuracy"] == pytest.approx(_test_accuracy(pick))
    summary = results["summary"]["table"]
    accs = [results["selections"][f"random|{s}|10"]["test_accuracy"] for s in (0, 1)]
    assert summary["random"]["10"]["test_accuracy"] == pytest.approx(np.mean(accs))
    assert results["summary"]["unprompted_test_accuracy"] == pytest.approx(_test_accuracy(()))
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["selections"] == results["selections"]
    assert "| random |" in (tmp_path / "q.md").read_text()
    assert (tmp_path / "q.png").stat().st_size > 0
    assert any("optuna-tpe seed 1: 10/10 evals" in line for line in lines)

    # Resuming with one more strategy scores only that strategy's prompts.
    calls.clear()
    args = _args(tmp_path, "random,optuna-tpe,cmaes")
    args.resume = True
    again = quality.Benchmark(args, lambda s, seed: FakeEvaluator(s, seed, calls), vocab,
                              results=quality.load_previous(args), log=lines.append)
    resumed = again.run()
    assert resumed["runs"]["random|0"] == results["runs"]["random|0"]
    assert calls and max(calls.values()) == 1
    cmaes_keys = {tuple(1000 + r for r in rows) for s in (0, 1)
                  for rows in resumed["runs"][f"cmaes|{s}"]["rows"]}
    assert {k for (split, _, k) in calls if split == "objective"} <= cmaes_keys


def test_partial_trace_is_replayed_not_rescored():
    calls: Counter = Counter()
    vocab = _vocabulary()
    cache = ScoreCache(lambda s, seed: FakeEvaluator(s, seed, calls), vocab)
    ids = np.asarray(vocab.token_ids)

    def evaluate(rows):
        return cache.score("objective", 0, [tuple(int(i) for i in ids[r]) for r in rows])

    allowed = list(range(3, 80))
    tpe = TPEProposer(allowed, 2, seed=0)
    partial = optimize(tpe, 6, evaluate)
    full = optimize(TPEProposer(allowed, 2, seed=0), 12, evaluate,
                            Trace(**partial.to_json()))
    assert full.rows[:6] == partial.rows and len(full.rows) == 12
    assert len(tpe.study.trials) == 6
    assert max(calls.values()) == 1 and len(calls) == len(set(map(tuple, full.rows)))


def test_vocab_data_searches_the_words_of_the_training_texts(tmp_path):
    data = tmp_path / "task"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "fax gax fax", "label": 0}\n'
                                      '{"text": "gax hax fax", "label": 1}\n')
    args = quality.parse_args([
        "--data-dir", str(data), "--budgets", "6", "--seeds", "0", "--strategies", "random",
        "--prompt-length", "2", "--top-n", "2", "--vocab", "data", "--pca-dims", "2",
        "--out", str(tmp_path / "q")])
    vocab = _vocabulary()
    bench = quality.Benchmark(args, lambda s, seed: FakeEvaluator(s, seed, Counter()), vocab,
                              log=lambda _: None)
    # " fax" (3 occurrences) and " gax" (2) are rows 5 and 6; " hax" (1) misses the top 2.
    assert bench.allowed == [5, 6]
    results = bench.run()
    assert {r for rows in results["runs"]["random|0"]["rows"] for r in rows} <= {5, 6}
    assert results["config"]["vocab"] == "data"


def test_resume_reads_results_written_before_the_vocab_option(tmp_path):
    args = _args(tmp_path, "random")
    args.resume = True
    old = quality.config_of(args)
    del old["vocab"]  # results files from before --vocab existed
    (tmp_path / "q.json").write_text(json.dumps({"config": old, "runs": {}}))
    assert quality.load_previous(args)["config"] == old
    args.vocab = "data"
    with pytest.raises(SystemExit, match="other settings \\(vocab\\)"):
        quality.load_previous(args)


def test_resume_with_a_new_seed_keeps_the_test_size(tmp_path):
    # The new seed's unprompted test score is cached, so no test evaluator is built.
    calls: Counter = Counter()
    vocab = _vocabulary()
    args = _args(tmp_path, "random")
    args.seeds = [0]
    quality.Benchmark(args, lambda s, seed: FakeEvaluator(s, seed, calls), vocab,
                      log=lambda _: None).run()
    args.seeds, args.resume = [0, 1], True
    again = quality.Benchmark(args, lambda s, seed: FakeEvaluator(s, seed, calls), vocab,
                              results=quality.load_previous(args), log=lambda _: None)
    assert again.run()["test_examples"] == 7
    again.write()
    assert "on 7 test examples" in (tmp_path / "q.md").read_text()


def test_holdout_scores_each_runs_top_prompts_and_the_selection(tmp_path):
    """benchmarks/holdout.py on a finished (fake) quality run: the top prompts by objective
    and the selected one of every run, each scored once on the seed's held-out split."""
    vocab = _vocabulary()
    args = _args(tmp_path, "random,cmaes")
    results = quality.Benchmark(args, lambda s, seed: FakeEvaluator(s, seed, Counter()),
                                vocab, log=lambda _: None).run()
    calls: Counter = Counter()
    cache = ScoreCache(lambda s, seed: FakeEvaluator(s, seed, calls), vocab)

    def key_of(rows):
        return tuple(1000 + r for r in rows)

    analysis = holdout.analyse(results, lambda seed, ps: cache.score("holdout", seed, ps),
                               key_of, ["random", "cmaes"], [0, 1], budget=10, top=3)
    assert max(calls.values()) == 1 and {split for split, _, _ in calls} == {"holdout"}
    for name, run in results["runs"].items():
        seed = int(name.split("|")[1])
        tops = ranked_prompts([key_of(r) for r in run["rows"]], run["values"], 10)[:3]
        assert len({k for k, _ in tops}) == 3
        values = [v for _, v in tops]
        assert values == sorted(run["values"], reverse=True)[:3]
        got = analysis["runs"][name]
        assert got["top_objective"] == values
        # The fake scores a prompt the same on every split but dev and test.
        assert [v for v, _ in got["top"]] == pytest.approx(values)
        sel = results["selections"][f"{name}|10"]["prompt"]
        assert got["selected"][0] == pytest.approx(_objective(sel) + 0.01 * seed)
    rows = holdout.table(analysis, ["random", "cmaes"], [0, 1], top=3)
    tops0 = analysis["runs"]["random|0"]["top"], analysis["runs"]["random|1"]["top"]
    assert rows["random"]["top-3 best value"] == pytest.approx(
        np.mean([max(v for v, _ in t) for t in tops0]))
    assert rows["random"]["top-3 mean objective"] == pytest.approx(np.mean(
        [analysis["runs"][f"random|{s}"]["top_objective"] for s in (0, 1)]))
    assert rows["unprompted"]["selected value"] == pytest.approx(_objective(()) + 0.005)
    text = holdout.markdown(rows, top=3, examples=7, budget=10)
    assert "| random |" in text and "| unprompted |" in text
    holdout.plot(analysis, ["random", "cmaes"], tmp_path / "h.png", "fake")
    assert (tmp_path / "h.png").stat().st_size > 0
