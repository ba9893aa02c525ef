"""Every resource a client can make the server hold is bounded (issue: hostile and heavy use).

Each test drives a real server on port 0 with one of the requests that used to exhaust
it, and checks the precise refusal and that the server stays responsive.
"""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

import promptbo
from promptbo.server.app import ServerOptions, create_server
from promptbo.server.limits import Limits
from promptbo.v1 import optimizer_service_pb2 as api
from promptbo.v1 import optimizer_service_pb2_grpc as api_grpc
from promptbo.v1 import resources_pb2 as pb

MB = 1024 * 1024


@pytest.fixture
def serve(tmp_path):
    """Starts servers with the given options; returns (port, manager)."""
    running = []

    def start(**options):
        server, port, manager = create_server(
            f"sqlite:///{tmp_path / f'l{len(running)}.db'}", ServerOptions(port=0, **options)
        )
        running.append(server)
        return port, manager

    yield start
    for server in running:
        server.stop(None).wait()


def stub_for(port):
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}",
        options=[("grpc.max_send_message_length", 64 * MB),
                 ("grpc.max_receive_message_length", 64 * MB)],
    )
    return channel, api_grpc.OptimizerServiceStub(channel)


def soft_spec(length=2, dim=3, strategy="random", **kw):
    spec = pb.StudySpec(strategy=strategy, **kw)
    spec.soft.prompt_length, spec.soft.embedding_dim = length, dim
    return spec


def code_of(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except grpc.RpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


# --- 1. WatchStudy streams hold no thread; a per-client cap --------------------------
def test_open_watch_streams_do_not_starve_other_calls(serve):
    limits = Limits(max_watch_streams_per_client=64)
    port, _ = serve(max_workers=4, limits=limits)
    channel, stub = stub_for(port)
    with channel:
        stub.CreateStudy(api.CreateStudyRequest(name="w", spec=soft_spec()))
        streams = [stub.WatchStudy(api.WatchStudyRequest(study="w")) for _ in range(40)]
        try:
            time.sleep(0.5)
            start = time.monotonic()
            stub.GetStudy(api.GetStudyRequest(name="w"), timeout=5)
            stub.ListStudies(api.ListStudiesRequest(), timeout=5)
            stub.CreateStudy(api.CreateStudyRequest(name="x", spec=soft_spec()), timeout=5)
            assert time.monotonic() - start < 5
            # The watchers are live: a suggestion reaches them.
            stub.SuggestTrials(api.SuggestTrialsRequest(study="w", count=1), timeout=5)
            assert next(streams[-1]).event == "suggested"
        finally:
            for s in streams:
                s.cancel()


def test_watch_streams_per_client_are_capped(serve):
    port, _ = serve(limits=Limits(max_watch_streams_per_client=3))
    channel, stub = stub_for(port)
    with channel:
        stub.CreateStudy(api.CreateStudyRequest(name="w", spec=soft_spec()))
        streams = [stub.WatchStudy(api.WatchStudyRequest(study="w")) for _ in range(3)]
        time.sleep(0.3)
        extra = stub.WatchStudy(api.WatchStudyRequest(study="w"))
        code, details = code_of(next, extra)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "per-client" in details
        streams[0].cancel()
        time.sleep(0.3)
        again = stub.WatchStudy(api.WatchStudyRequest(study="w"), timeout=1)
        assert code_of(next, again)[0] is grpc.StatusCode.DEADLINE_EXCEEDED  # accepted, idle
        for s in streams[1:]:
            s.cancel()


# --- 2. uploads are checked chunk by chunk ------------------------------------------
def test_upload_refuses_data_beyond_its_declared_size_at_the_first_chunk(serve):
    port, _ = serve()
    channel, stub = stub_for(port)
    sent = []

    def chunks():
        for i in range(40):
            sent.append(i)
            msg = api.UploadVocabularyRequest(tokens=["a"] if i == 0 else [],
                                              token_ids=[1] if i == 0 else [],
                                              embeddings=b"\0" * (8 * MB))
            if i == 0:
                msg.size, msg.embedding_dim = 1, 1
            yield msg

    with channel:
        code, details = code_of(stub.UploadVocabulary, chunks(), timeout=60)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "chunk 0 carries more data than the declared size=1" in details
    assert len(sent) < 40, "the server read the whole stream before refusing it"


# --- 4. spec sizes are derived from memory and refused before allocation ------------
def test_a_soft_spec_too_large_for_memory_is_refused_before_allocation(serve):
    port, _ = serve()
    channel, stub = stub_for(port)
    spec = soft_spec(512, 1024, strategy="gp")
    spec.soft.intrinsic_dim = 2048
    with channel:
        start = time.monotonic()
        code, details = code_of(stub.CreateStudy, api.CreateStudyRequest(name="big", spec=spec))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "MiB" in details
        assert time.monotonic() - start < 5
        spec.soft.intrinsic_dim = 0  # a 2^19-dim GP search: also too big
        assert code_of(stub.CreateStudy, api.CreateStudyRequest(name="big", spec=spec))[0] \
            is grpc.StatusCode.INVALID_ARGUMENT
        assert stub.ListStudies(api.ListStudiesRequest()).studies == []


# --- 5. AddTrials counts ------------------------------------------------------------
def test_add_trials_count_is_limited(serve):
    port, _ = serve()
    with promptbo.Client(f"127.0.0.1:{port}") as c:
        study = c.create_study("a", promptbo.SoftPromptSpace(1, 2), strategy="gp")
        known = [(promptbo.Prompt(vector=np.array([[i / 1001, 0.5]], dtype=np.float32)), float(i))
                 for i in range(1001)]
        with pytest.raises(promptbo.InvalidArgumentError, match="at most 1000 trials"):
            study.add_trials(known)
        assert study.refresh().trial_count == 0
        assert len(study.add_trials(known[:1000])) == 1000


# --- 6. responses fit the message limit; so must one trial --------------------------
def test_suggest_stores_no_more_trials_than_one_response_carries(serve):
    port, _ = serve(max_message_bytes=1 * MB)
    channel, stub = stub_for(port)
    with channel:
        stub.CreateStudy(api.CreateStudyRequest(name="s", spec=soft_spec(8, 4096)))
        resp = stub.SuggestTrials(api.SuggestTrialsRequest(study="s", count=1000, client_id="c"))
        got = len(resp.trials)
        assert 1 <= got < 10  # 128 KiB per trial in a 1 MiB response
        study = stub.GetStudy(api.GetStudyRequest(name="s")).study
        assert study.active_count == got  # nothing stored beyond what was delivered
        page = stub.ListTrials(api.ListTrialsRequest(study="s", page_size=1000))
        assert len(page.trials) == got


def test_a_spec_whose_single_trial_exceeds_the_message_limit_is_refused(serve):
    port, _ = serve(max_message_bytes=1 * MB)
    channel, stub = stub_for(port)
    with channel:
        code, details = code_of(
            stub.CreateStudy, api.CreateStudyRequest(name="s", spec=soft_spec(64, 4096))
        )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "message limit" in details


# --- 7. cheap suggestions with big prompts leave the event loop ---------------------
def test_cheap_suggestions_of_big_prompts_run_off_the_event_loop(serve):
    _, manager = serve()
    manager.create_study("small", soft_spec_domain(2, 3))
    manager.create_study("big", soft_spec_domain(64, 1024))
    for name in ("small", "big"):
        manager.suggest_trials(name, 1, "w")
    with manager.quick("small", 1) as quick:
        assert quick
    with manager.quick("big", 1) as quick:
        assert not quick  # 256 KiB per trial: on the thread pool


def soft_spec_domain(length, dim):
    from promptbo.server.domain import SoftPromptSpace, StudySpec

    return StudySpec(space=SoftPromptSpace(length, dim), strategy="random")


# --- 9. ListStudies pages; vocabularies are shared -----------------------------------
def test_list_studies_pages_by_count_and_by_size(serve):
    port, manager = serve(max_message_bytes=2 * MB)
    n = 60_000
    rng = np.random.default_rng(0)
    table = promptbo.VocabularyTable([f"t{i}" for i in range(n)], list(range(n)),
                                     rng.normal(size=(n, 2)).astype(np.float32))
    with promptbo.Client(f"127.0.0.1:{port}", timeout=120) as c:
        vocab = c.upload_vocabulary(table)
        scores = rng.random(n)
        for i in range(6):  # each spec carries 60k scores: about 540 KB
            space = promptbo.HardPromptSpace(1, vocab, pca_dims=1, top_n=10, top_n_scores=scores)
            c.create_study(f"h{i}", space, strategy="random")
        for i in range(5):
            c.create_study(f"s{i}", promptbo.SoftPromptSpace(1, 2), strategy="random")
        channel, stub = stub_for(port)
        with channel:
            first = stub.ListStudies(api.ListStudiesRequest())
            assert 1 <= len(first.studies) < 6 and first.next_page_token
            small = stub.ListStudies(api.ListStudiesRequest(page_size=2, page_token="h5"))
            assert [s.name for s in small.studies] == ["s0", "s1"]
            assert small.next_page_token == "s1"
        assert [s.name for s in c.list_studies()] == [f"h{i}" for i in range(6)] + [
            f"s{i}" for i in range(5)
        ]
        for name in ("h0", "h1"):
            c.get_study(name).ask()
    tables = [manager.studies.peek(n).runtime.engine.box.table for n in ("h0", "h1")]
    assert tables[0].data_ptr() == tables[1].data_ptr()  # one table for both studies


# --- 10. per-name state is freed ----------------------------------------------------
def test_lookups_of_missing_studies_leave_no_state_behind(serve):
    port, manager = serve()
    channel, stub = stub_for(port)
    with channel:
        for i in range(300):
            code_of(stub.GetStudy, api.GetStudyRequest(name=f"missing-{i}"))
    assert manager.studies.locks_in_use == 0
    assert len(manager.events) == 0


# --- 8. deadlines reach the suggestion computation -----------------------------------
def test_a_suggestion_stops_when_its_caller_is_gone_and_frees_the_study_lock(serve):
    port, _ = serve()
    channel, stub = stub_for(port)
    options = {"num_initial": "2", "max_batch": "1", "raw_samples": "64", "maxiter": "20",
               "mc_samples": "64", "num_restarts": "2"}
    with channel:
        stub.CreateStudy(api.CreateStudyRequest(
            name="g", spec=soft_spec(2, 3, strategy="gp", strategy_options=options)))
        for i in range(4):
            (t,) = stub.SuggestTrials(api.SuggestTrialsRequest(study="g", count=1)).trials
            stub.CompleteTrial(api.CompleteTrialRequest(study="g", trial_id=t.id, value=i))
        code, _ = code_of(stub.SuggestTrials,
                          api.SuggestTrialsRequest(study="g", count=1000), timeout=1.5)
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        start = time.monotonic()
        study = stub.GetStudy(api.GetStudyRequest(name="g"), timeout=10).study
        assert time.monotonic() - start < 5, "the study lock was held after the deadline"
        assert study.active_count == 0  # the abandoned suggestion stored nothing
        trials = stub.SuggestTrials(api.SuggestTrialsRequest(study="g", count=1), timeout=30)
        assert len(trials.trials) == 1


# --- 11. edge inputs ----------------------------------------------------------------
def test_edge_inputs_get_invalid_argument_with_short_messages(serve):
    port, _ = serve()
    channel, stub = stub_for(port)
    with channel:
        stub.CreateStudy(api.CreateStudyRequest(name="e", spec=soft_spec()))
        for token in (str(2**63), str(2**64 + 1), "-1", "x"):
            code, _ = code_of(stub.ListTrials,
                              api.ListTrialsRequest(study="e", page_token=token))
            assert code is grpc.StatusCode.INVALID_ARGUMENT, token
        for request in (
            api.SuggestTrialsRequest(study="e", count=1, client_id="a\0b"),
        ):
            assert code_of(stub.SuggestTrials, request)[0] is grpc.StatusCode.INVALID_ARGUMENT
        (t,) = stub.SuggestTrials(api.SuggestTrialsRequest(study="e", count=1)).trials
        for request in (
            api.CompleteTrialRequest(study="e", trial_id=t.id, failure_reason="x\0"),
            api.CompleteTrialRequest(study="e", trial_id=t.id, value=1, client_id="\0"),
        ):
            assert code_of(stub.CompleteTrial, request)[0] is grpc.StatusCode.INVALID_ARGUMENT
        assert stub.GetStudy(api.GetStudyRequest(name="e")).study.active_count == 1
        code, details = code_of(stub.CreateStudy, api.CreateStudyRequest(
            name="n" * (8 * MB), spec=soft_spec()))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and len(details) < 1100
        code, details = code_of(stub.CreateStudy, api.CreateStudyRequest(
            name="tiny-lease", spec=soft_spec(lease_seconds=1e-300)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "lease_seconds" in details
        raw = channel.unary_unary("/promptbo.v1.OptimizerService/GetStudy")
        code, details = code_of(raw, b"\xff\xff\xff\xff", timeout=5)
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "protobuf" in details
        stream = channel.stream_unary("/promptbo.v1.OptimizerService/UploadVocabulary")
        code, _ = code_of(stream, iter([b"\xff\xff\xff"]), timeout=5)
        assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_active_soft_trials_are_capped_by_their_memory(serve):
    port, _ = serve(limits=Limits(max_active_trial_bytes=8 * MB))
    channel, stub = stub_for(port)
    with channel:
        stub.CreateStudy(api.CreateStudyRequest(name="m", spec=soft_spec(64, 1024)))
        # 64 x 1024 values x 32 bytes = 2 MiB in memory per trial: 4 fit in 8 MiB.
        first = stub.SuggestTrials(api.SuggestTrialsRequest(study="m", count=10, client_id="a"))
        assert len(first.trials) == 4
        code, details = code_of(stub.SuggestTrials,
                                api.SuggestTrialsRequest(study="m", count=1, client_id="b"))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "memory limit" in details
        stub.CompleteTrial(api.CompleteTrialRequest(study="m", trial_id=first.trials[0].id,
                                                    value=1.0))
        again = stub.SuggestTrials(api.SuggestTrialsRequest(study="m", count=1, client_id="b"))
        assert len(again.trials) == 1
