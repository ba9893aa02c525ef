"""Transfer from earlier studies (``transfer_from``) through the client suite (in-process
servicer and a real server on port 0) and across a server restart on one SQLite file."""

from __future__ import annotations

import numpy as np
import pytest

import promptbo
from promptbo.errors import InvalidArgumentError, NotFoundError
from promptbo.server.app import ServerOptions, create_server
from promptbo.server.storage import open_storage

SPACE = promptbo.SoftPromptSpace(2, 3)
OPTIMUM = np.array([0.5, -0.3, 0.2, 0.1, -0.6, 0.4])


def objective(vector, shift: float = 0.0) -> float:
    """A smooth task: higher near OPTIMUM (+ shift); the related source uses a small shift."""
    return -float(np.sum((np.asarray(vector).reshape(-1) - OPTIMUM - shift) ** 2))


def run(study, n: int, fn=objective) -> list[float]:
    values = []
    for _ in range(n):
        (trial,) = study.ask(1)
        value = fn(trial.prompt.vector)
        study.tell(trial, value)
        values.append(value)
    return values


#: The initial design of a study with a related source: its best prompts alternate with
#: the study's own design points.
INTERLEAVED = ["transfer", "suggested", "transfer", "suggested", "transfer"]


def make_source(client, name: str, fn=objective, n: int = 40):
    source = client.create_study(name, SPACE, strategy="random", seed=3)
    run(source, n, fn)
    return source


def test_warm_start_beats_cold_start_early(client):
    make_source(client, "src", lambda v: objective(v, shift=0.05))
    cold = client.create_study("cold", SPACE, seed=1)
    warm = client.create_study("warm", SPACE, seed=1, transfer_from=["src"])
    assert list(warm.info.spec.transfer_from) == ["src"]
    cold_values, warm_values = run(cold, 5), run(warm, 5)
    # The sources' best prompts come first: far better than the Sobol design. They
    # alternate with the study's own design and, ranking above it, keep their slots.
    assert max(warm_values) > max(cold_values) + 0.3
    trials = list(warm.trials())
    assert [t.source for t in trials] == INTERLEAVED
    source_best = max(client.get_study("src").trials(), key=lambda t: t.value)
    np.testing.assert_allclose(trials[0].prompt.vector, source_best.prompt.vector, atol=1e-5)
    # Then the ensemble surrogate: a related source keeps most of the weight.
    run(warm, 3)
    (status,) = warm.transfer_sources()
    assert status.study == "src" and status.trials == 40 and status.note == ""
    assert status.weight > 0.5
    assert all(t.source == "suggested" for t in list(warm.trials())[5:])


def test_an_unrelated_source_gets_a_low_weight(client):
    make_source(client, "anti", lambda v: -objective(v))  # ranks every prompt backwards
    study = client.create_study("target", SPACE, seed=2, transfer_from=["anti"],
                                transfer="surrogate")
    run(study, 9)
    (status,) = study.transfer_sources()
    assert status.weight < 0.1
    assert all(t.source == "suggested" for t in study.trials())


def test_sources_are_checked_at_creation(client):
    with pytest.raises(NotFoundError, match="transfer source study 'ghost' not found"):
        client.create_study("t", SPACE, transfer_from=["ghost"])
    client.create_study("wide", promptbo.SoftPromptSpace(2, 4), strategy="random")
    with pytest.raises(InvalidArgumentError, match="'wide' does not fit.*2 x 4.*2 x 3"):
        client.create_study("t", SPACE, transfer_from=["wide"])
    with pytest.raises(InvalidArgumentError, match="cannot transfer from itself"):
        client.create_study("t", SPACE, transfer_from=["t"])
    client.create_study("ok", SPACE, strategy="random")
    with pytest.raises(InvalidArgumentError, match="transfer=surrogate needs the gp strategy"):
        client.create_study("t", SPACE, strategy="cmaes", transfer_from=["ok"],
                            transfer="surrogate")
    with pytest.raises(InvalidArgumentError, match="transfer must be one of"):
        client.create_study("t", SPACE, transfer_from=["ok"], transfer="all")
    with pytest.raises(NotFoundError):
        client.get_study("t")  # nothing was stored


def test_hard_source_with_another_vocabulary_is_refused(client, vocab_table):
    vocab_id = client.upload_vocabulary(vocab_table)
    other = promptbo.VocabularyTable(vocab_table.tokens, vocab_table.token_ids,
                                     vocab_table.embeddings * 2)
    other_id = client.upload_vocabulary(other)
    client.create_study("h", promptbo.HardPromptSpace(2, other_id), strategy="random")
    client.create_study("soft", SPACE, strategy="random")
    with pytest.raises(InvalidArgumentError, match="'h' does not fit.*vocabulary"):
        client.create_study("t", promptbo.HardPromptSpace(2, vocab_id), transfer_from=["h"])
    with pytest.raises(InvalidArgumentError, match="'soft' does not fit.*soft prompts"):
        client.create_study("t", promptbo.HardPromptSpace(2, vocab_id), transfer_from=["soft"])


def test_hard_prompts_transfer_the_sources_best_prompts(client, vocab_table):
    vocab_id = client.upload_vocabulary(vocab_table)
    space = promptbo.HardPromptSpace(2, vocab_id)
    a = client.create_study("a", space, strategy="random", seed=1)
    b = client.create_study("b", space, strategy="random", seed=2)
    shared = [1005, 1007]  # good on both sources: it must come first
    a.add_trials([(hard(shared), 0.9), (hard([1001, 1002]), 1.0), (hard([1003, 1004]), 0.1)])
    b.add_trials([(hard(shared), 0.8), (hard([1010, 1011]), 0.0)])
    target = client.create_study("t", space, transfer_from=["a", "b"], transfer="init")
    trials = target.ask(5)  # the source prompts take the even slots of the initial design
    assert [t.source for t in trials] == ["transfer", "suggested"] * 2 + ["transfer"]
    first = [list(t.prompt.token_ids) for t in trials[::2]]
    # Summed 2q - 1: shared 1/3 + 1, a's best 1, b's worst (of two) 0, a's worst -1/3.
    assert first == [shared, [1001, 1002], [1010, 1011]]


def hard(token_ids: list[int]) -> promptbo.Prompt:
    return promptbo.Prompt(token_ids=token_ids)


def test_transfer_survives_restart_and_a_deleted_source(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"

    def serve():
        storage = open_storage(url)
        server, port, _ = create_server(storage, ServerOptions(port=0))
        return server, storage, promptbo.Client(f"127.0.0.1:{port}")

    server, storage, client = serve()
    try:
        make_source(client, "src", n=30)
        study = client.create_study("t", SPACE, seed=4, transfer_from=["src"])
        run(study, 3)
    finally:
        client.close()
        server.stop(None).wait()
        storage.close()

    server, storage, client = serve()
    try:
        study = client.get_study("t")
        (status,) = study.transfer_sources()
        assert "once the study's model is built" in status.note
        run(study, 5)  # one more transferred prompt (never a repeat), then the surrogate
        trials = list(study.trials())
        assert [t.source for t in trials] == INTERLEAVED + ["suggested"] * 3
        assert len({np.asarray(t.prompt.vector).tobytes() for t in trials}) == 8
        (status,) = study.transfer_sources()
        assert status.trials == 30 and status.note == "" and status.weight > 0
        client.delete_study("src")
        run(study, 1)  # the live engine keeps the source's trials
        (status,) = study.transfer_sources()
        assert "deleted" in status.note
    finally:
        client.close()
        server.stop(None).wait()
        storage.close()

    server, storage, client = serve()
    try:
        study = client.get_study("t")
        run(study, 2)  # the engine is rebuilt without the deleted source
        (status,) = study.transfer_sources()
        assert status.note == "deleted; no longer used" and status.weight == 0
        assert study.info.completed_count == 11
    finally:
        client.close()
        server.stop(None).wait()
        storage.close()


def test_hard_prompts_with_another_filter_and_the_gp_surrogate(client, vocab_table):
    vocab_id = client.upload_vocabulary(vocab_table)
    source = client.create_study("wide", promptbo.HardPromptSpace(2, vocab_id),
                                 strategy="random", seed=1)

    def score(trial) -> float:  # prefers low token ids
        return -float(sum(trial.prompt.token_ids) - 2000)

    for trial in source.ask(20):
        source.tell(trial, score(trial))
    allowed = list(range(32, 64))  # the target only allows the upper half of the table
    target = client.create_study(
        "narrow", promptbo.HardPromptSpace(2, vocab_id, allowed=allowed),
        transfer_from=["wide"], seed=2)
    for _ in range(8):
        (trial,) = target.ask(1)
        assert all(1032 <= t < 1064 for t in trial.prompt.token_ids)
        target.tell(trial, score(trial))
    trials = list(target.trials())
    # The projected source prompts still score above the study's own design: kept.
    assert [t.source for t in trials] == INTERLEAVED + ["suggested"] * 3
    assert len({tuple(t.prompt.token_ids) for t in trials}) == 8
    (status,) = target.transfer_sources()
    assert status.trials == 20 and 0.0 <= status.weight <= 1.0 and status.note == ""


@pytest.mark.parametrize("strategy", ["gp", "zopo"])
def test_pool_studies_transfer_the_sources_best_candidates(client, strategy):
    rng = np.random.default_rng(0)
    table = promptbo.PoolTable([f"Candidate instruction {i}." for i in range(30)],
                               rng.normal(size=(30, 6)).astype(np.float32), "test-enc")
    pool_id = client.upload_pool(table)
    space = promptbo.PoolSpace(pool_id)
    src = client.create_study("src", space, strategy="random", seed=1)
    src.add_trials([(promptbo.Prompt(pool_index=i), v)
                    for i, v in [(4, 0.9), (11, 0.2), (17, 0.7), (23, 0.5), (2, 0.1)]])
    target = client.create_study("t", space, strategy=strategy, seed=2, transfer_from=["src"],
                                 strategy_options={"num_initial": 5})
    trials = target.ask(5)
    assert [t.source for t in trials] == INTERLEAVED
    # the source's best three, best first, each with its text
    assert [t.prompt.pool_index for t in trials[::2]] == [4, 17, 23]
    assert all(t.prompt.text == table.texts[t.prompt.pool_index] for t in trials)
    for t in trials:
        target.tell(t, 1.0 if t.source == "transfer" else 0.0)
    after = target.ask(3)
    assert all(t.source == "suggested" for t in after)
    assert len({t.prompt.pool_index for t in [*trials, *after]}) == 8
    (status,) = target.transfer_sources()
    assert status.study == "src" and status.trials == 5
    if strategy == "gp":  # both: the RGPE ensemble after the transferred start
        assert 0.0 <= status.weight <= 1.0 and status.note == ""
    else:
        assert "initialization" in status.note


def test_pool_transfer_needs_one_embedding_space_and_init(client):
    rng = np.random.default_rng(1)

    def upload(n: int, model: str, dim: int = 4) -> str:
        return client.upload_pool(promptbo.PoolTable(
            [f"Text {i}" for i in range(n)], rng.normal(size=(n, dim)).astype(np.float32),
            model))

    a = upload(12, "enc-a")
    client.create_study("on-a", promptbo.PoolSpace(a), strategy="random")
    with pytest.raises(InvalidArgumentError,
                       match="'on-a' does not fit.*embedded by 'enc-a' and 'enc-b'.*same named"):
        client.create_study("t", promptbo.PoolSpace(upload(13, "enc-b")), transfer_from=["on-a"])
    with pytest.raises(InvalidArgumentError, match="'on-a' does not fit.*4- and 5-dimensional"):
        client.create_study("t", promptbo.PoolSpace(upload(13, "enc-a", 5)),
                            transfer_from=["on-a"])
    with pytest.raises(InvalidArgumentError, match="'enc-a' and 'an unnamed model'"):
        client.create_study("t", promptbo.PoolSpace(upload(13, "")), transfer_from=["on-a"])
    with pytest.raises(InvalidArgumentError,
                       match="transfer=surrogate needs the gp strategy, not 'zopo'"):
        client.create_study("t", promptbo.PoolSpace(a), strategy="zopo",
                            transfer_from=["on-a"], transfer="surrogate")
    client.create_study("soft", SPACE, strategy="random")
    with pytest.raises(InvalidArgumentError,
                       match="'soft' does not fit.*soft prompts.*candidate pool"):
        client.create_study("t", promptbo.PoolSpace(a), transfer_from=["soft"])
    assert [s.name for s in client.list_studies()] == ["on-a", "soft"]  # nothing half-made


@pytest.mark.parametrize("strategy", ["gp", "zopo"])
def test_pool_studies_transfer_from_another_pool_in_the_same_space(client, strategy):
    """A source on pool A, a target on pool B (another task's candidates, embedded by the
    same model): the target starts from the candidates of B nearest A's best ones, and
    its gp ensemble fits the source on A's own embeddings."""
    rng = np.random.default_rng(5)
    emb_a = rng.normal(size=(30, 6)).astype(np.float32)
    # B: 20 candidates of its own, plus near-copies of A's 4, 17 and 23 at rows 31, 7, 12.
    emb_b = rng.normal(size=(40, 6)).astype(np.float32)
    for a_row, b_row in [(4, 31), (17, 7), (23, 12)]:
        emb_b[b_row] = emb_a[a_row] + 0.01 * rng.normal(size=6)
    pool_a = client.upload_pool(promptbo.PoolTable(
        [f"Source instruction {i}." for i in range(30)], emb_a, "shared-enc"))
    pool_b = client.upload_pool(promptbo.PoolTable(
        [f"Target instruction {i}." for i in range(40)], emb_b, "shared-enc"))
    src = client.create_study("src", promptbo.PoolSpace(pool_a), strategy="random", seed=1)
    src.add_trials([(promptbo.Prompt(pool_index=i), v)
                    for i, v in [(4, 0.9), (11, 0.2), (17, 0.7), (23, 0.5), (2, 0.1)]])
    target = client.create_study("t", promptbo.PoolSpace(pool_b), strategy=strategy, seed=2,
                                 transfer_from=["src"], strategy_options={"num_initial": 5})
    trials = target.ask(5)
    assert [t.source for t in trials] == INTERLEAVED
    assert [t.prompt.pool_index for t in trials[::2]] == [31, 7, 12]  # nearest, best first
    assert all(t.prompt.text == f"Target instruction {t.prompt.pool_index}." for t in trials)
    for t in trials:
        target.tell(t, 1.0 if t.source == "transfer" else 0.0)
    after = target.ask(3)
    assert all(t.source == "suggested" and 0 <= t.prompt.pool_index < 40 for t in after)
    (status,) = target.transfer_sources()
    assert status.study == "src" and status.trials == 5
    if strategy == "gp":
        assert 0.0 <= status.weight <= 1.0 and status.note == ""


def test_pool_gp_study_transfers_through_the_surrogate(client):
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(40, 5)).astype(np.float32)
    table = promptbo.PoolTable([f"Instruction {i}." for i in range(40)], emb, "test-enc")
    space = promptbo.PoolSpace(client.upload_pool(table))
    best = emb[9]

    def value(i: int) -> float:
        return -float(np.square(emb[i] - best).sum())

    src = client.create_study("src", space, strategy="random", seed=1)
    src.add_trials([(promptbo.Prompt(pool_index=i), value(i)) for i in range(0, 40, 2)])
    target = client.create_study("t", space, seed=2, transfer_from=["src"],
                                 transfer="surrogate", strategy_options={"num_initial": "3"})
    assert target.info.spec.transfer == "surrogate"
    for _ in range(6):
        (t,) = target.ask(1)
        assert t.source == "suggested"  # no transferred start in surrogate mode
        target.tell(t, value(t.prompt.pool_index))
    (status,) = target.transfer_sources()
    assert status.note == "" and 0.5 < status.weight <= 1.0  # the source ranks the target well

