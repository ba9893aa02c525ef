"""Property-based bad input over every RPC: each request gets a precise status code (never
INTERNAL or UNKNOWN), the server stays up, and the store stays sound."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptbo.server.app import ServerOptions, create_server
from promptbo.server.storage import open_storage
from promptbo.v1 import optimizer_service_pb2 as api
from promptbo.v1 import optimizer_service_pb2_grpc as api_grpc
from promptbo.v1 import resources_pb2 as pb

EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    db = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    storage = open_storage(f"sqlite:///{db}")
    server, port, _ = create_server(storage, ServerOptions(port=0, max_message_bytes=1 << 20))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = api_grpc.OptimizerServiceStub(channel)
    spec = pb.StudySpec(strategy="random", max_trials=1000)
    spec.soft.prompt_length, spec.soft.embedding_dim = 2, 3
    stub.CreateStudy(api.CreateStudyRequest(name="base", spec=spec))
    yield stub, storage
    channel.close()
    server.stop(None).wait()
    storage.close()


def call(stub, method: str, request):
    try:
        getattr(stub, method)(request, timeout=30)
    except grpc.RpcError as err:
        assert err.code() in EXPECTED, f"{method} answered {err.code()}: {err.details()}"
        assert err.details(), "an error must say what to fix"
        return err.code()
    return grpc.StatusCode.OK


names = st.one_of(st.just("base"), st.just(""), st.text(max_size=300))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(math.nan))
ids = st.integers(min_value=0, max_value=2**64 - 1)


@FUZZ
@given(name=names, length=st.integers(0, 2000), dim=st.integers(0, 70000),
       intrinsic=st.integers(0, 5000), bound=floats, strategy=st.text(max_size=12),
       lease=floats, vocab=st.text(max_size=70), pca=st.integers(0, 3000))
def test_create_study(env, name, length, dim, intrinsic, bound, strategy, lease, vocab, pca):
    stub, _ = env
    spec = pb.StudySpec(strategy=strategy, lease_seconds=lease if math.isfinite(lease) else 0)
    if dim % 2:
        spec.soft.prompt_length, spec.soft.embedding_dim = length, dim
        spec.soft.intrinsic_dim, spec.soft.bound = intrinsic, bound
    else:
        spec.hard.prompt_length, spec.hard.vocabulary_id, spec.hard.pca_dims = length, vocab, pca
    call(stub, "CreateStudy", api.CreateStudyRequest(name=name, spec=spec))


@FUZZ
@given(study=names, count=st.integers(0, 10**6), trial_id=ids, value=floats,
       metric=floats, reason=st.text(max_size=50))
def test_suggest_complete_heartbeat(env, study, count, trial_id, value, metric, reason):
    stub, _ = env
    call(stub, "SuggestTrials", api.SuggestTrialsRequest(study=study, count=count, client_id="f"))
    call(stub, "CompleteTrial", api.CompleteTrialRequest(
        study=study, trial_id=trial_id, value=value, metrics={"m": metric},
        failure_reason=reason, client_id="f"))
    call(stub, "HeartbeatTrial", api.HeartbeatTrialRequest(study=study, trial_id=trial_id))
    call(stub, "GetBestTrial", api.GetBestTrialRequest(study=study))


@FUZZ
@given(study=names, size=st.integers(0, 5000), token=st.text(max_size=20),
       state=st.integers(0, 3))
def test_list_trials(env, study, size, token, state):
    stub, _ = env
    call(stub, "ListTrials", api.ListTrialsRequest(
        study=study, page_size=size, page_token=token, state=state))


@FUZZ
@given(vector=st.lists(floats, max_size=12), ids_=st.lists(st.integers(-5, 10**12), max_size=4),
       value=floats)
def test_add_trials(env, vector, ids_, value):
    stub, _ = env
    req = api.AddTrialsRequest(study="base")
    req.trials.add(prompt=pb.Prompt(vector=vector, token_ids=ids_), value=value)
    call(stub, "AddTrials", req)


@FUZZ
@given(size=st.integers(0, 50), dim=st.integers(0, 8), rows=st.integers(0, 50),
       ntok=st.integers(0, 50), dup=st.booleans(), nan=st.booleans(),
       expected=st.sampled_from(["", "deadbeef"]))
def test_upload_vocabulary(env, size, dim, rows, ntok, dup, nan, expected):
    stub, _ = env
    emb = np.ones((rows, max(dim, 1)), dtype="<f4")
    if nan and rows:
        emb[0, 0] = np.nan
    token_ids = [0] * ntok if dup else list(range(ntok))
    req = api.UploadVocabularyRequest(
        size=size, embedding_dim=dim, tokens=["t"] * ntok, token_ids=token_ids,
        embeddings=emb.tobytes(), expected_id=expected)
    call(stub, "UploadVocabulary", iter([req]))


def test_oversize_and_empty_messages(env):
    stub, _ = env
    with pytest.raises(grpc.RpcError) as info:
        stub.AddTrials(api.AddTrialsRequest(study="base", trials=[
            api.KnownTrial(prompt=pb.Prompt(vector=[0.0] * 400_000))]), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert call(stub, "UploadVocabulary", iter([])) == grpc.StatusCode.INVALID_ARGUMENT
    assert call(stub, "AddTrials", api.AddTrialsRequest(study="base")) == (
        grpc.StatusCode.INVALID_ARGUMENT)


def test_store_sound_after_fuzzing(env):
    stub, storage = env
    assert storage.check_integrity() == []
    assert stub.GetStudy(api.GetStudyRequest(name="base"), timeout=10).study.name == "base"
