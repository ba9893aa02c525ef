"""Principals and scopes on a real server: roles per method, study-name prefixes, and trials
bound to the principal that took them."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import promptbo
from promptbo.server.app import ServerOptions, create_server
from promptbo.server.auth import Principals
from promptbo.v1 import optimizer_service_pb2 as api
from promptbo.v1 import optimizer_service_pb2_grpc as api_grpc

TOKENS = {"ops": "t-admin", "team-a": "t-a", "b": "t-b", "c": "t-c", "viewer": "t-r"}


@pytest.fixture
def port(tmp_path):
    (tmp_path / "ops.token").write_text("t-admin\n")
    doc = {"principals": [
        {"name": "ops", "token_file": str(tmp_path / "ops.token"), "role": "admin"},
        {"name": "team-a", "token": "t-a", "role": "write", "study_prefix": "a-"},
        {"name": "b", "token": "t-b", "role": "write"},
        {"name": "c", "token": "t-c", "role": "write"},
        {"name": "viewer", "token": "t-r", "role": "read"},
    ]}
    path = tmp_path / "principals.json"
    path.write_text(json.dumps(doc))
    opts = ServerOptions(port=0, principals=Principals.load(path))
    server, bound, _ = create_server(f"sqlite:///{tmp_path / 'p.db'}", opts)
    yield bound
    server.stop(None).wait()


def client(port, who):
    return promptbo.Client(f"127.0.0.1:{port}", token=TOKENS[who])


def space():
    return promptbo.SoftPromptSpace(1, 2)


def test_roles_gate_methods(port):
    with client(port, "ops") as ops:
        ops.create_study("shared", space(), strategy="random")
    with client(port, "viewer") as viewer:
        assert viewer.get_study("shared").name == "shared"
        assert [s.name for s in viewer.list_studies()] == ["shared"]
        with pytest.raises(promptbo.PermissionDeniedError, match="role read.*needs write"):
            viewer.create_study("v", space(), strategy="random")
        with pytest.raises(promptbo.PermissionDeniedError):
            viewer.get_study("shared").ask()
    with client(port, "b") as b, pytest.raises(promptbo.PermissionDeniedError, match="admin"):
        b.delete_study("shared")
    with client(port, "ops") as ops:
        ops.delete_study("shared")


def test_unknown_tokens_are_unauthenticated_and_health_stays_open(port, monkeypatch):
    monkeypatch.delenv("PROMPTBO_TOKEN", raising=False)
    with (
        promptbo.Client(f"127.0.0.1:{port}", token="nope") as c,
        pytest.raises(promptbo.UnauthenticatedError),
    ):
        c.list_studies()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_a_study_prefix_confines_a_principal(port):
    with client(port, "ops") as ops:
        ops.create_study("other", space(), strategy="random")
    with client(port, "team-a") as a:
        a.create_study("a-one", space(), strategy="random").ask()
        with pytest.raises(promptbo.PermissionDeniedError, match="'a-'"):
            a.create_study("b-one", space(), strategy="random")
        with pytest.raises(promptbo.PermissionDeniedError):
            a.get_study("other")
        assert [s.name for s in a.list_studies()] == ["a-one"]
    with client(port, "ops") as ops:
        assert [s.name for s in ops.list_studies()] == ["a-one", "other"]


def test_trials_are_bound_to_the_principal_that_took_them(port):
    with client(port, "b") as b:
        study = b.create_study("s", space(), strategy="random", lease_seconds=1)
        (t,) = study.ask(client_id="w1")
    with client(port, "c") as c:
        other = c.get_study("s")
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = api_grpc.OptimizerServiceStub(channel)
        meta = [("authorization", "Bearer t-c")]
        # A tell without client_id from another principal: refused.
        with pytest.raises(grpc.RpcError) as err:
            stub.CompleteTrial(api.CompleteTrialRequest(study="s", trial_id=t.id, value=1),
                               metadata=meta)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        time.sleep(1.2)  # b's lease lapses: still not c's to heartbeat or complete
        with pytest.raises(promptbo.PermissionDeniedError):
            other.heartbeat(t.id)
        with pytest.raises(promptbo.PermissionDeniedError):
            other.tell(t.id, 1.0, client_id="w1")
        channel.close()
    with client(port, "b") as b:
        study = b.get_study("s")
        # Another client of the same principal never held it: no takeover by heartbeat.
        with pytest.raises(promptbo.FailedPreconditionError, match="only its holder"):
            b._call("HeartbeatTrial", api.HeartbeatTrialRequest(
                study="s", trial_id=t.id, client_id="w2"))
        assert study.tell(t.id, 0.5, client_id="w1").value == 0.5
        (t2,) = study.ask(client_id="w1")
    with client(port, "ops") as ops:
        done = ops.get_study("s").tell(t2.id, 2.0, client_id="anyone")
        assert done.value == 2.0
    with client(port, "viewer") as viewer:
        stored = viewer._call("ListTrials", api.ListTrialsRequest(study="s")).trials
        assert [tr.principal for tr in stored] == ["b", "b"]


def test_principals_file_errors_name_the_entry(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"principals": [{"name": "x", "role": "write"}]}))
    with pytest.raises(ValueError, match="principal 0"):
        Principals.load(path)
    path.write_text(json.dumps({"principals": [{"name": "x", "token": "t", "role": "root"}]}))
    with pytest.raises(ValueError, match="principal 0"):
        Principals.load(path)
    path.write_text(json.dumps({"principals": [
        {"name": "x", "token": "t"}, {"name": "y", "token": "t"}]}))
    with pytest.raises(ValueError, match="own non-empty token"):
        Principals.load(path)


def test_serve_refuses_a_bad_principals_file(tmp_path):
    from promptbo.cli import main

    path = tmp_path / "p.json"
    path.write_text(json.dumps({"principals": [{"name": "x", "role": "boss", "token": "t"}]}))
    with pytest.raises(SystemExit, match="principals file: principal 0"):
        main(["serve", "--storage", "memory:", "--port", "0", "--principals-file", str(path)])
