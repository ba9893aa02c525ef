"""The client suite: every RPC through the Python client, in-process, over gRPC, and
through three ``promptbo serve`` replicas on one PostgreSQL schema with every call sent
to the next replica in turn (``replicas``, when ``PROMPTBO_TEST_POSTGRES_URL`` is set):
the same assertions hold against one server and against three."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import promptbo
from promptbo import HardPromptSpace, SoftPromptSpace
from tests.service.conftest import one_server
from tests.service.replicated import ReplicatedServers


@pytest.fixture(scope="module")
def replica_servers(tmp_path_factory) -> Iterator[ReplicatedServers]:
    """Three servers on one fresh PostgreSQL schema, kept for the module (each test
    deletes its studies afterwards)."""
    with ReplicatedServers(tmp_path_factory.mktemp("replicas")) as servers:
        yield servers


@pytest.fixture(params=["in-process", "grpc",
                        pytest.param("replicas", marks=pytest.mark.postgres)])
def client(request, tmp_path) -> Iterator[promptbo.Client]:
    """The suite's client: one server (see conftest) or three replicas taking turns."""
    if request.param != "replicas":
        with one_server(request.param, tmp_path) as one:
            yield one
        return
    servers = request.getfixturevalue("replica_servers")
    with servers.client() as c:
        yield c
        for study in c.list_studies():
            c.delete_study(study.name)


def soft_space(length=2, dim=3, intrinsic=0):
    return SoftPromptSpace(length, dim, intrinsic_dim=intrinsic)


def test_create_is_get_or_create(client):
    a = client.create_study("s", soft_space(), strategy="random", max_trials=5)
    b = client.create_study("s", soft_space(), strategy="random", max_trials=5)
    assert a.name == b.name == "s"
    with pytest.raises(promptbo.AlreadyExistsError, match="different spec"):
        client.create_study("s", soft_space(dim=4), strategy="random")
    assert [s.name for s in client.list_studies()] == ["s"]


def test_create_retry_with_same_request_id_returns_study(client):
    client.create_study("s", soft_space(), strategy="random", request_id="r1")
    again = client.create_study("s", soft_space(dim=9), strategy="random", request_id="r1")
    assert again.info.spec.soft.embedding_dim == 3


def test_ask_tell_soft_prompt_until_budget(client):
    study = client.create_study("soft", soft_space(), strategy="random", max_trials=6, seed=3)
    target = np.ones((2, 3), dtype=np.float32) * 0.5
    told = 0
    while True:
        trials = study.ask(4)
        if not trials:
            break
        for t in trials:
            assert t.prompt.vector.shape == (2, 3)
            value = -float(((t.prompt.vector - target) ** 2).sum())
            study.tell(t, value, {"dist": -value})
            told += 1
    assert told == 6
    study.refresh()
    assert study.done and study.info.completed_count == 6
    best = study.best_trial()
    assert best.value == max(t.value for t in study.trials(state="completed"))


def test_asking_again_returns_own_active_trials(client):
    study = client.create_study("s", soft_space(), strategy="random")
    first = study.ask(2)
    again = study.ask(2)
    assert [t.id for t in again] == [t.id for t in first]
    other = promptbo.Client.__new__(promptbo.Client)
    other.__dict__.update(client.__dict__, client_id="someone-else")
    assert {t.id for t in other.get_study("s").ask(2)}.isdisjoint(t.id for t in first)


def test_repeat_and_conflicting_tell(client):
    study = client.create_study("s", soft_space(), strategy="random")
    (t,) = study.ask(1)
    study.tell(t, 0.5, {"acc": 1.0})
    study.tell(t, 0.5, {"acc": 1.0})  # identical repeat: no-op
    with pytest.raises(promptbo.FailedPreconditionError, match="already completed"):
        study.tell(t, 0.7)
    assert [x.value for x in study.trials()] == [0.5]


def test_bad_values_are_invalid_argument(client):
    study = client.create_study("s", soft_space(), strategy="random")
    (t,) = study.ask(1)
    for bad in (math.nan, math.inf):
        with pytest.raises(promptbo.InvalidArgumentError, match="finite"):
            study.tell(t, bad)
    with pytest.raises(promptbo.InvalidArgumentError, match="finite"):
        study.tell(t, 1.0, {"m": math.nan})
    assert study.trials().__next__().state == "active"


def test_not_found_errors(client):
    with pytest.raises(promptbo.NotFoundError, match="nope"):
        client.get_study("nope")
    study = client.create_study("s", soft_space(), strategy="random")
    with pytest.raises(promptbo.NotFoundError, match="trial 99"):
        study.tell(99, 1.0)
    study.delete()
    with pytest.raises(promptbo.NotFoundError):
        study.ask(1)


def test_invalid_specs(client):
    with pytest.raises(promptbo.InvalidArgumentError, match="prompt_length"):
        client.create_study("s", SoftPromptSpace(0, 3), strategy="random")
    with pytest.raises(promptbo.InvalidArgumentError, match="unknown strategy"):
        client.create_study("s", soft_space(), strategy="nonsense")
    with pytest.raises(promptbo.NotFoundError, match="upload it"):
        client.create_study("h", HardPromptSpace(3, "f" * 64), strategy="random")
    with pytest.raises(promptbo.InvalidArgumentError, match="study name"):
        client.create_study("a/b", soft_space(), strategy="random")


def test_hard_prompt_study_with_vocabulary(client, vocab_table):
    vid = client.upload_vocabulary(vocab_table, chunk_bytes=256)
    assert client.upload_vocabulary(vocab_table) == vid
    study = client.create_study("h", HardPromptSpace(3, vid, pca_dims=2), strategy="random")
    trials = study.ask(5)
    for t in trials:
        assert len(t.prompt.token_ids) == 3
        assert all(1000 <= i < 1064 for i in t.prompt.token_ids)
        assert t.prompt.text == "".join(t.prompt.tokens)
        study.tell(t, float(sum(t.prompt.token_ids)))
    assert len({t.prompt.token_ids for t in trials}) == 5


def test_vocabulary_filter_allowed(client, vocab_table):
    vid = client.upload_vocabulary(vocab_table)
    study = client.create_study(
        "h", HardPromptSpace(2, vid, pca_dims=2, allowed=[1, 2, 3]), strategy="random"
    )
    for t in study.ask(6):
        assert set(t.prompt.token_ids) <= {1001, 1002, 1003}
    with pytest.raises(promptbo.InvalidArgumentError, match="outside the vocabulary"):
        client.create_study("h2", HardPromptSpace(2, vid, allowed=[500]), strategy="random")


def test_add_trials_warm_start(client, vocab_table):
    vid = client.upload_vocabulary(vocab_table)
    study = client.create_study("h", HardPromptSpace(2, vid, pca_dims=2), strategy="random")
    added = study.add_trials([(promptbo.Prompt(token_ids=(1000, 1001)), 3.0)])
    assert added[0].source == "added" and added[0].prompt.text == " w0 w1"
    assert study.best_trial().value == 3.0
    with pytest.raises(promptbo.InvalidArgumentError, match="not in the study's vocabulary"):
        study.add_trials([(promptbo.Prompt(token_ids=(1, 2)), 1.0)])
    with pytest.raises(promptbo.InvalidArgumentError, match="prompt_length"):
        study.add_trials([(promptbo.Prompt(token_ids=(1000,)), 1.0)])


def test_list_trials_pages(client):
    study = client.create_study("s", soft_space(), strategy="random")
    for t in study.ask(7):
        study.tell(t, 1.0)
    ids = [t.id for t in study.trials(page_size=2)]
    assert ids == list(range(1, 8))
    assert len(list(study.trials(state="active"))) == 0


def test_trial_context_tells_and_fails(client):
    study = client.create_study("s", soft_space(), strategy="random", max_trials=2)
    with study.trial_context(heartbeat_seconds=0.05) as trial:
        trial.report(2.0, {"acc": 0.5})
    with pytest.raises(RuntimeError), study.trial_context() as trial2:
        raise RuntimeError("model crashed")
    states = {t.id: (t.state, t.failure_reason) for t in study.trials()}
    assert states[trial.id] == ("completed", "")
    assert states[trial2.id][0] == "failed" and "model crashed" in states[trial2.id][1]


def test_max_active_trials_cap(client):
    study = client.create_study("s", soft_space(), strategy="random", max_active_trials=2)
    assert len(study.ask(5)) == 2
    other = promptbo.Client.__new__(promptbo.Client)
    other.__dict__.update(client.__dict__, client_id="other")
    with pytest.raises(promptbo.ResourceExhaustedError, match="max_active_trials"):
        other.get_study("s").ask(1)


def test_watch_streams_until_done(client):
    study = client.create_study("w", soft_space(), strategy="random", max_trials=3)
    events: list[str] = []
    completed: list[int] = []
    ready = threading.Event()

    def watch():
        ready.set()
        for kind, snapshot, _trial in study.watch():
            events.append(kind)
            completed.append(snapshot.completed_count)

    th = threading.Thread(target=watch, daemon=True)
    th.start()
    ready.wait()
    import time

    time.sleep(0.3)
    while trials := study.ask(2):
        for t in trials:
            study.tell(t, 1.0)
    th.join(timeout=10)
    assert not th.is_alive()
    assert events.count("completed") == 3 and events[-1] == "done"
    # Every event carries the study's counts right after it.
    assert completed == sorted(completed) and completed[-1] == 3


def other_client(client: promptbo.Client, client_id: str) -> promptbo.Client:
    """The same connection under another client id (another worker)."""
    other = promptbo.Client.__new__(promptbo.Client)
    other.__dict__.update(client.__dict__, client_id=client_id)
    return other


def test_an_expired_lease_goes_to_one_other_worker(client):
    study = client.create_study("s", soft_space(), strategy="random", max_trials=1,
                                lease_seconds=1)
    (t,) = study.ask(1)
    time.sleep(1.3)
    b, c = (other_client(client, w).get_study("s") for w in ("b", "c"))
    assert [x.id for x in b.ask(1)] == [t.id]  # reissued, the budget still 1
    assert c.ask(1) == []  # held by b now, and no room for another
    with pytest.raises(promptbo.FailedPreconditionError, match="held by another worker"):
        study.tell(t, 1.0)
    assert b.tell(t, 2.0).value == 2.0
    with pytest.raises(promptbo.FailedPreconditionError):
        study.tell(t, 3.0)
    assert [(x.id, x.value) for x in study.trials()] == [(t.id, 2.0)]


def test_a_heartbeat_keeps_the_lease(client):
    study = client.create_study("s", soft_space(), strategy="random", lease_seconds=1)
    (t,) = study.ask(1)
    for _ in range(3):
        time.sleep(0.4)
        study.heartbeat(t)
    assert [x.id for x in other_client(client, "b").get_study("s").ask(1)] != [t.id]
    assert study.tell(t, 1.0).state == "completed"


def test_a_batch_of_results_is_recorded_once(client):
    study = client.create_study("s", soft_space(), strategy="random", max_trials=4)
    trials = study.ask(4)
    results = [(t, float(i)) for i, t in enumerate(trials)]
    told, _ = study.tell_many(results)
    again, _ = study.tell_many(results)  # a retry: acknowledged, nothing written twice
    assert [t.value for t in told] == [t.value for t in again] == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(promptbo.FailedPreconditionError, match="already completed"):
        study.tell_many([(trials[0], 9.0)])
    study.refresh()
    assert study.done and study.info.completed_count == 4
    assert study.best_trial().id == trials[3].id


def test_a_failure_is_recorded_once(client):
    study = client.create_study("s", soft_space(), strategy="random", max_trials=2)
    (t,) = study.ask(1)
    assert study.fail(t, "out of memory").state == "failed"
    assert study.fail(t, "out of memory").state == "failed"  # the same again: a no-op
    with pytest.raises(promptbo.FailedPreconditionError):
        study.tell(t, 1.0)
    (t2,) = study.ask(1)  # a failure does not use the budget
    study.tell(t2, 1.0)
    assert [x.state for x in study.trials()] == ["failed", "completed"]
    study.refresh()
    assert not study.done and study.info.completed_count == 1


def test_a_retried_ask_returns_the_same_trials(client):
    study = client.create_study("s", soft_space(), strategy="random", max_trials=3)
    first = study.ask(2)
    for _ in range(3):  # a worker retrying its ask, each time on another server
        assert [t.id for t in study.ask(2)] == [t.id for t in first]
    assert [t.id for t in study.ask(3)][:2] == [t.id for t in first]
    assert len(list(study.trials())) == 3


def test_studies_are_listed_and_deleted_everywhere(client):
    for name in ("b", "a", "c"):
        client.create_study(name, soft_space(), strategy="random")
    for _ in range(3):
        assert [s.name for s in client.list_studies()] == ["a", "b", "c"]
    client.get_study("b").delete()
    for _ in range(3):
        assert [s.name for s in client.list_studies()] == ["a", "c"]
        with pytest.raises(promptbo.NotFoundError):
            client.get_study("b")
    again = client.create_study("b", soft_space(dim=5), strategy="random", max_trials=1)
    (t,) = again.ask(1)
    assert t.id == 1 and t.prompt.vector.shape == (2, 5)
