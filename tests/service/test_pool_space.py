"""Candidate-pool studies through the client, in process and over a real gRPC server:
the upload (chunked, content-hashed, shared), every pool strategy's ask/tell loop, added
trials, restarts, and the errors of bad input."""

from __future__ import annotations

import numpy as np
import pytest

import promptbo
from promptbo.server.app import ServerOptions, create_server
from promptbo.server.storage import open_storage


def pool_table(n: int = 40, dim: int = 8, seed: int = 0) -> promptbo.PoolTable:
    rng = np.random.default_rng(seed)
    texts = [f"Instruction number {i}: decide the label." for i in range(n)]
    return promptbo.PoolTable(texts, rng.normal(size=(n, dim)).astype(np.float32), "test-enc")


def test_upload_pool_is_content_hashed_and_chunked(client):
    table = pool_table()
    pool_id = client.upload_pool(table, chunk_bytes=200)  # many chunks
    assert pool_id == table.id
    assert client.upload_pool(table) == pool_id  # already present: same id
    other = promptbo.PoolTable(table.texts, table.embeddings, "another-encoder")
    assert client.upload_pool(other) != pool_id


@pytest.mark.parametrize("strategy", ["random", "gp", "zopo"])
def test_pool_study_hands_out_distinct_members_until_the_budget(client, strategy):
    table = pool_table()
    pool_id = client.upload_pool(table)
    study = client.create_study(
        f"pool-{strategy}", promptbo.PoolSpace(pool_id), strategy=strategy, max_trials=16,
        seed=3, strategy_options={} if strategy == "random" else {"num_initial": 4},
    )
    assert study.info.spec.pool.pool_id == pool_id
    seen = []
    while len(seen) < 16:
        trials = study.ask(2)
        if not trials:
            break
        for t in trials:
            i = t.prompt.pool_index
            assert t.prompt.text == table.texts[i] and not t.prompt.token_ids
            seen.append(i)
            # the objective: closeness to candidate 7 in embedding space
            study.tell(t, -float(np.linalg.norm(table.embeddings[i] - table.embeddings[7])))
    assert len(seen) == 16 and len(set(seen)) == 16
    best = study.best_trial()
    assert best is not None and best.prompt.pool_index in seen
    listed = {t.prompt.pool_index for t in study.trials(state="completed")}
    assert listed == set(seen)


def test_add_trials_takes_pool_indices_and_checks_them(client):
    table = pool_table()
    study = client.create_study("pool-add", promptbo.PoolSpace(client.upload_pool(table)),
                                strategy="gp", max_trials=10)
    added = study.add_trials([(promptbo.Prompt(pool_index=5), 0.9)])
    assert added[0].prompt.pool_index == 5 and added[0].prompt.text == table.texts[5]
    with pytest.raises(promptbo.InvalidArgumentError, match=r"pool_index in \[0, 40\)"):
        study.add_trials([(promptbo.Prompt(pool_index=40), 0.1)])
    with pytest.raises(promptbo.InvalidArgumentError, match="pool_index"):
        study.add_trials([(promptbo.Prompt(text="not from the pool"), 0.1)])
    trials = study.ask(3)
    assert 5 not in {t.prompt.pool_index for t in trials}


def test_bad_pool_input_gets_precise_errors(client):
    table = pool_table()
    with pytest.raises(promptbo.NotFoundError, match="UploadPool"):
        client.create_study("nope", promptbo.PoolSpace("0" * 64))
    with pytest.raises(promptbo.InvalidArgumentError, match="needs a pool_id"):
        client.create_study("empty", promptbo.PoolSpace(""))
    pool_id = client.upload_pool(table)
    with pytest.raises(promptbo.InvalidArgumentError, match="does not search candidate pools"):
        client.create_study("turbo", promptbo.PoolSpace(pool_id), strategy="turbo")
    with pytest.raises(promptbo.InvalidArgumentError, match="has no option raw_samples"):
        client.create_study("opt", promptbo.PoolSpace(pool_id), strategy="zopo",
                            strategy_options={"raw_samples": 3})
    with pytest.raises(promptbo.InvalidArgumentError, match="acquisition"):
        client.create_study("acq", promptbo.PoolSpace(pool_id), strategy="gp",
                            strategy_options={"acquisition": "pi"})
    dup = promptbo.PoolTable(["same", "same"], np.zeros((2, 3), np.float32))
    with pytest.raises(promptbo.InvalidArgumentError, match="distinct"):
        client.upload_pool(dup)
    blank = promptbo.PoolTable(["ok", "  "], np.zeros((2, 3), np.float32))
    with pytest.raises(promptbo.InvalidArgumentError, match="text 1 is empty"):
        client.upload_pool(blank)
    assert [s.name for s in client.list_studies()] == []


def test_pool_study_resumes_after_a_server_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'pool.db'}"
    table = pool_table()

    def run(n_tell: int) -> tuple[list[int], list[int]]:
        storage = open_storage(url)
        server, port, manager = create_server(storage, ServerOptions(port=0))
        try:
            with promptbo.Client(f"127.0.0.1:{port}") as c:
                study = c.create_study("resume", promptbo.PoolSpace(c.upload_pool(table)),
                                       strategy="zopo", max_trials=12, seed=1,
                                       strategy_options={"num_initial": 3})
                told = []
                for _ in range(n_tell):
                    (t,) = study.ask(1)
                    study.tell(t, float(-abs(t.prompt.pool_index - 20)))
                    told.append(t.prompt.pool_index)
                done = [t.prompt.pool_index for t in study.trials(state="completed")]
                return told, done
        finally:
            server.stop(0)
            manager.close()
            storage.close()

    first, _ = run(5)
    second, done = run(5)
    assert len(done) == 10 and len(set(done)) == 10
    assert not set(first) & set(second)


def test_prefetching_never_hands_out_a_member_twice(tmp_path):
    """With prefetch on, a refill whose snapshot predates a trial handed out (and completed)
    meanwhile must not offer that trial's prompt again."""
    from promptbo.server.domain import Pool, PoolSpace, StudySpec
    from promptbo.server.manager import StudyManager
    from promptbo.server.storage import InMemoryStorage

    table = pool_table(n=30)
    manager = StudyManager(InMemoryStorage(), prefetch=2)
    try:
        pool = Pool(tuple(table.texts), table.embeddings, table.embedding_model)
        pool_id, _ = manager.upload_pool(pool)
        spec = StudySpec(space=PoolSpace(pool_id), strategy="zopo",
                         strategy_options={"num_initial": "3"}, max_trials=30)
        manager.create_study("prefetch", spec)
        seen = []
        for _ in range(30):
            (t,), _ = manager.suggest_trials("prefetch", 1, "w")
            seen.append(t.prompt.pool_index)
            manager.complete_trial("prefetch", t.id, -abs(t.prompt.pool_index - 9), client_id="w")
        assert sorted(seen) == list(range(30))
    finally:
        manager.close()
