"""Bearer-token auth and TLS on a real server bound to 127.0.0.1."""

from __future__ import annotations

import logging
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import promptbo
from promptbo.server.app import ServerOptions, create_server

TOKEN = "s3cret-token-value"


@pytest.fixture
def auth_server(tmp_path):
    opts = ServerOptions(port=0, auth_token=TOKEN)
    server, port, _ = create_server(f"sqlite:///{tmp_path / 'a.db'}", opts)
    yield port
    server.stop(None).wait()


def space():
    return promptbo.SoftPromptSpace(1, 2)


def test_right_token_works(auth_server):
    with promptbo.Client(f"127.0.0.1:{auth_server}", token=TOKEN) as c:
        assert c.create_study("s", space(), strategy="random").name == "s"


@pytest.mark.parametrize("token", ["", "wrong"])
def test_missing_or_wrong_token_is_unauthenticated(auth_server, token, monkeypatch):
    monkeypatch.delenv("PROMPTBO_TOKEN", raising=False)
    with promptbo.Client(f"127.0.0.1:{auth_server}", token=token) as c:
        with pytest.raises(promptbo.UnauthenticatedError, match="bearer token"):
            c.list_studies()  # noqa: SIM117
        with pytest.raises(promptbo.UnauthenticatedError):
            c.upload_vocabulary(
                promptbo.VocabularyTable(["a"], [1], __import__("numpy").ones((1, 2), "f4"))
            )


def test_health_check_needs_no_token(auth_server):
    with grpc.insecure_channel(f"127.0.0.1:{auth_server}") as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_token_never_logged(auth_server, caplog):
    caplog.set_level(logging.DEBUG)
    with (
        promptbo.Client(f"127.0.0.1:{auth_server}", token="wrong-token-xyz") as c,
        pytest.raises(promptbo.UnauthenticatedError),
    ):
        c.list_studies()
    assert TOKEN not in caplog.text and "wrong-token-xyz" not in caplog.text


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def tls_server(tmp_path, cert):
    opts = ServerOptions(port=0, tls_cert=str(cert[0]), tls_key=str(cert[1]), auth_token=TOKEN)
    server, port, _ = create_server(f"sqlite:///{tmp_path / 't.db'}", opts)
    yield port
    server.stop(None).wait()


def test_tls_client_with_ca_file(tls_server, cert):
    with promptbo.Client(f"localhost:{tls_server}", token=TOKEN, ca_file=str(cert[0])) as c:
        c.create_study("s", space(), strategy="random")
        assert [s.name for s in c.list_studies()] == ["s"]


def test_plaintext_client_to_tls_server_fails(tls_server):
    with (
        promptbo.Client(f"127.0.0.1:{tls_server}", token=TOKEN, timeout=3) as c,
        pytest.raises(promptbo.UnavailableError),
    ):
        c.list_studies()
