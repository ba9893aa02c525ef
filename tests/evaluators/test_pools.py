"""Building candidate pools and serving pool studies end to end: the text helpers,
MiniLM and hidden-state embeddings, APE generation on a tiny Llama, and `promptbo pool
build` + `promptbo worker --pool` against a real server with real forward passes."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest

import promptbo
from promptbo.errors import InvalidArgumentError
from promptbo.evaluators import create_evaluator, pools
from promptbo.server.app import ServerOptions, create_server
from promptbo.worker import Worker


def test_read_instructions_dedupes_and_reads_jsonl(tmp_path):
    plain = tmp_path / "ins.txt"
    plain.write_text("Classify the review.\n\n  classify   the REVIEW. \nSay if it is good.\n")
    assert pools.read_instructions(plain) == ["Classify the review.", "Say if it is good."]
    js = tmp_path / "ins.jsonl"
    js.write_text('{"text": "A"}\n{"text": "B"}\n')
    assert pools.read_instructions(js) == ["A", "B"]
    js.write_text('{"txt": "A"}\n')
    with pytest.raises(InvalidArgumentError, match="text"):
        pools.read_instructions(js)
    with pytest.raises(InvalidArgumentError, match="cannot read"):
        pools.read_instructions(tmp_path / "missing.txt")


def test_clean_instruction_keeps_the_first_sentence():
    assert pools.clean_instruction(" classify the review as positive. Input: x") == (
        "Classify the review as positive."
    )
    assert pools.clean_instruction("write the sentiment\nInput: x") == "Write the sentiment."
    assert pools.clean_instruction("...") == ""


def test_combine_crosses_instructions_phrases_and_demonstrations():
    demos = [(f"text {i}", "great" if i % 2 else "terrible") for i in range(10)]
    out = pools.combine(["Rate it.", "Judge it."], label_phrases=["", 'Say "great".'],
                        demonstrations=demos, k=2, demo_sets=3, seed=1)
    assert len(out) == 2 * 2 * 3 and len(set(out)) == len(out)
    assert all(t.startswith(("Rate it.", "Judge it.")) and t.count("Input: ") == 2 for t in out)
    assert sum('Say "great".' in t for t in out) == 6
    assert pools.combine(["A."], label_phrases=[""]) == ["A."]
    assert len(pools.combine(["A.", "B.", "C."], limit=2)) == 2
    with pytest.raises(InvalidArgumentError, match="k=3"):
        pools.combine(["A."], demonstrations=demos[:2], k=3)


def test_combine_with_several_demonstration_counts_keeps_the_bare_instructions():
    demos = [(f"text {i}", "great" if i % 2 else "terrible") for i in range(10)]
    one = pools.combine(["Rate it.", "Judge it."], demonstrations=demos, k=1, demo_sets=2,
                        seed=3)
    both = pools.combine(["Rate it.", "Judge it."], demonstrations=demos, k=(0, 1),
                         demo_sets=2, seed=3)
    # once bare (demo_sets does not repeat it), then the same draws as k=1 alone
    assert both == ["Rate it.", *one[:2], "Judge it.", *one[2:]]
    assert pools.demo_counts("0,1") == [0, 1] and pools.demo_counts("2") == 2
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
        pools.demo_counts("1,-1")
    with pytest.raises(InvalidArgumentError, match="k must be >= 0"):
        pools.combine(["A."], k=())


def test_pool_files_roundtrip_and_bad_files_are_refused(tmp_path):
    table = promptbo.PoolTable(["a b", "ünï 日本"], np.eye(2, 3, dtype=np.float32), "enc")
    path = pools.save_pool(table, tmp_path / "p.npz")
    got = pools.load_pool(path)
    assert got.texts == table.texts and got.embedding_model == "enc"
    assert got.embeddings.tobytes() == table.embeddings.tobytes() and got.id == table.id
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidArgumentError, match="not a pool file"):
        pools.load_pool(tmp_path / "bad.npz")


@pytest.mark.slow
def test_minilm_embeddings_are_unit_length_and_semantic():
    emb, name = pools.embed_texts(
        ["The movie was great.", "The film was wonderful.", "Stock prices fell sharply."]
    )
    assert name == pools.MINILM_NAME and emb.shape == (3, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


@pytest.mark.slow
def test_hidden_state_embeddings_and_ape_generation_on_a_tiny_llama(tiny_llama_dir):
    emb, name = pools.embed_texts(["a movie", "the plot was fun"], f"hidden:{tiny_llama_dir}")
    assert emb.shape == (2, 32) and name == f"hidden-mean:{tiny_llama_dir}"
    examples = [("the movie was great", "positive"), ("the plot was boring", "negative")] * 3
    got = pools.generate_instructions(str(tiny_llama_dir), examples, n=3, seed=0,
                                      max_new_tokens=12)
    assert len(got) <= 3 and len({g.lower() for g in got}) == len(got)
    assert got and all(pools.clean_instruction(g) == g for g in got), got


@pytest.mark.slow
def test_pool_build_and_a_worker_on_a_pool_study(tmp_path, tiny_llama_dir):
    ins = tmp_path / "ins.txt"
    ins.write_text("Classify the review.\nIs the review positive or negative?\nRead it.\n")
    out = tmp_path / "pool.npz"
    server, port, manager = create_server(f"sqlite:///{tmp_path / 'p.db'}", ServerOptions(port=0))
    address = f"127.0.0.1:{port}"
    try:
        built = subprocess.run(
            [sys.executable, "-m", "promptbo.cli", "pool", "build", str(out), "--server",
             address, "--instructions", str(ins), "--data", "demo", "--k", "3", "--demos", "0,1",
             "--demo-sets", "2", "--label-phrase", "", "--label-phrase",
             "Answer positive or negative.", "--upload"],
            capture_output=True, text=True, timeout=240,
        )
        assert built.returncode == 0, built.stderr
        table = pools.load_pool(out)
        # 3 instructions x 2 phrases x (bare + 2 draws of one demonstration)
        assert len(table.texts) == 3 * 2 * 3 and table.embedding_model == pools.MINILM_NAME
        assert sum("Input: " not in t for t in table.texts) == 6
        assert built.stdout.strip().splitlines()[-1] == table.id

        done = subprocess.run(
            [sys.executable, "-m", "promptbo.cli", "worker", "--server", address, "--quiet",
             "--study", "pool", "--evaluator", "hf-causal", "-o", f"model={tiny_llama_dir}",
             "-o", "data=demo", "-o", "k=3", "--pool", str(out), "--strategy", "zopo",
             "--trials", "6"],
            capture_output=True, text=True, timeout=240,
        )
        assert done.returncode == 0, done.stderr
        assert "6 completed" in done.stdout
        with promptbo.Client(address) as client:
            study = client.get_study("pool")
            assert study.info.spec.pool.pool_id == table.id
            completed = list(study.trials(state="completed"))
        # The worker also recorded the unprompted model as the study's reference.
        assert [t.prompt.text for t in completed if t.source == "reference"] == [""]
        trials = [t for t in completed if t.source != "reference"]
        assert len({t.prompt.pool_index for t in trials}) == 6
        assert all(t.prompt.text == table.texts[t.prompt.pool_index] for t in trials)
        # The stored value is what the evaluator computes with the text in the template,
        # and different candidates score differently.
        with create_evaluator("hf-causal", model=str(tiny_llama_dir), data="demo", k=3) as ev:
            again = ev.score([trials[0].prompt])[0]
            assert again.value == pytest.approx(trials[0].value, abs=1e-5)
            text_only = ev.score([promptbo.Prompt(text=trials[0].prompt.text)])[0]
            assert text_only.value == pytest.approx(trials[0].value, abs=1e-5)
        assert len({round(t.value, 6) for t in trials}) > 1

        # A second study on the same pool starts from the first one's best candidates.
        warm = subprocess.run(
            [sys.executable, "-m", "promptbo.cli", "worker", "--server", address, "--quiet",
             "--study", "pool-warm", "--evaluator", "hf-causal", "-o",
             f"model={tiny_llama_dir}", "-o", "data=demo", "-o", "k=3", "--pool", str(out),
             "--strategy", "gp", "--trials", "3", "--transfer-from", "pool"],
            capture_output=True, text=True, timeout=240,
        )
        assert warm.returncode == 0, warm.stderr
        with promptbo.Client(address) as client:
            got = [t for t in client.get_study("pool-warm").trials(state="completed")
                   if t.source != "reference"]
        best = max(trials, key=lambda t: t.value)
        # (the third slot is the source's second best only if the guard keeps it: the
        # tiny model's values are close to noise)
        assert [t.source for t in got[:2]] == ["transfer", "suggested"]
        assert got[0].prompt.pool_index == best.prompt.pool_index
        assert len({t.prompt.pool_index for t in got}) == 3
    finally:
        server.stop(0)
        manager.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hf-mlm", "python"])
def test_other_text_evaluators_serve_a_pool_study(tmp_path, kind, tiny_roberta_dir):
    texts = ["Classify the review.", "Is it positive?", "Read carefully.", "Decide."]
    rng = np.random.default_rng(0)
    table = promptbo.PoolTable(texts, rng.normal(size=(4, 5)).astype(np.float32), "test")
    server, port, manager = create_server(f"sqlite:///{tmp_path / 'o.db'}", ServerOptions(port=0))
    try:
        with promptbo.Client(f"127.0.0.1:{port}") as client:
            study = client.create_study(kind, promptbo.PoolSpace(client.upload_pool(table)),
                                        strategy="random", max_trials=4)
            if kind == "hf-mlm":
                ev = create_evaluator("hf-mlm", model=str(tiny_roberta_dir), data="demo", k=3)
            else:
                script = tmp_path / "objective.py"
                script.write_text("def text_length(prompts):\n"
                                  "    return [float(len(p.text)) for p in prompts]\n")
                ev = create_evaluator("python", function=f"{script}:text_length")
            with ev:
                stats = Worker(study, ev, batch_size=2).run()
            assert stats.completed == 4 and stats.failed == 0
            trials = list(study.trials(state="completed"))
            if kind == "python":
                assert all(t.value == len(t.prompt.text) for t in trials)
    finally:
        server.stop(0)
        manager.close()
