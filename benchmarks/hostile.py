"""Hostile-input check: the reproductions of the reliability issue against a real server.

Starts ``promptbo serve`` (SQLite in a temporary folder) as a subprocess and sends each
request that used to exhaust or break a server, recording the status code, the time and
the server's RSS. Run it against this tree, or against another build with
``--pythonpath`` (a folder holding a ``promptbo`` package), to compare:

    python -m benchmarks.hostile
    python -m benchmarks.hostile --pythonpath /tmp/oldpkg     # e.g. the code before

Prints one JSON object: scenario -> figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import psutil

from promptbo.v1 import optimizer_service_pb2 as api
from promptbo.v1 import optimizer_service_pb2_grpc as api_grpc
from promptbo.v1 import resources_pb2 as pb

MB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _code(call, *args, **kwargs) -> str:
    try:
        call(*args, **kwargs)
    except grpc.RpcError as err:
        return err.code().name
    return "OK"


def _soft(length: int, dim: int, strategy: str = "random", **options) -> pb.StudySpec:
    spec = pb.StudySpec(strategy=strategy, strategy_options={k: str(v) for k, v in
                                                             options.items()})
    spec.soft.prompt_length, spec.soft.embedding_dim = length, dim
    return spec


def run(pythonpath: str, workdir: Path, skip: frozenset[str] = frozenset()) -> dict:
    port = _free_port()
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    log = (workdir / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "promptbo.cli", "--log-level", "error", "serve", "--storage",
         f"sqlite:///{workdir / 'h.db'}", "--port", str(port), "--prefetch", "0"],
        stdout=log, stderr=log, env=env,
    )
    proc = psutil.Process(server.pid)
    rss = lambda: round(proc.memory_info().rss / MB)  # noqa: E731
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", 64 * MB), ("grpc.max_receive_message_length", 64 * MB)])
    stub = api_grpc.OptimizerServiceStub(channel)
    grpc.channel_ready_future(channel).result(timeout=60)
    out: dict = {}
    try:
        # 1. open WatchStudy streams, then other calls
        stub.CreateStudy(api.CreateStudyRequest(name="w", spec=_soft(2, 3)))
        streams = [stub.WatchStudy(api.WatchStudyRequest(study="w")) for _ in range(40)]
        time.sleep(1)
        t = time.monotonic()
        code = _code(stub.GetStudy, api.GetStudyRequest(name="w"), timeout=5)
        out["watch_40_then_GetStudy"] = {"code": code, "s": round(time.monotonic() - t, 2)}
        for s in streams:
            s.cancel()
        time.sleep(1)
        # 2. upload declaring 1x1, sending 20 x 32 MB
        sent = []

        def chunks():
            for i in range(20):
                sent.append(i)
                msg = api.UploadVocabularyRequest(embeddings=b"\0" * (32 * MB))
                if i == 0:
                    msg.size, msg.embedding_dim = 1, 1
                    msg.tokens.append("a")
                    msg.token_ids.append(1)
                yield msg

        before = rss()
        code = _code(stub.UploadVocabulary, chunks(), timeout=120)
        out["upload_1x1_20x32MB"] = {"code": code, "chunks_read": len(sent),
                                     "rss_mb_growth": rss() - before}
        # 3. gp with extreme values
        stub.CreateStudy(api.CreateStudyRequest(name="n", spec=_soft(
            2, 2, "gp", num_initial=4, raw_samples=16, num_restarts=1, maxiter=5)))
        codes = []
        for v in [1e308, -1e308] * 7 + [None]:
            try:
                (tr,) = stub.SuggestTrials(api.SuggestTrialsRequest(study="n", count=1),
                                           timeout=120).trials
                codes.append("OK")
            except grpc.RpcError as err:
                codes.append(err.code().name)
                continue
            if v is not None:
                stub.CompleteTrial(api.CompleteTrialRequest(study="n", trial_id=tr.id, value=v))
        out["gp_pm1e308_suggestions"] = {c: codes.count(c) for c in sorted(set(codes))}
        # 4. a soft spec within the old documented limits
        spec = _soft(512, 1024, "gp")
        spec.soft.intrinsic_dim = 2048
        t = time.monotonic()
        out["soft_512x1024_k2048"] = {"code": _code(stub.CreateStudy, api.CreateStudyRequest(
            name="big", spec=spec), timeout=60), "s": round(time.monotonic() - t, 2)}
        # 5. AddTrials with 5,000 known trials
        req = api.AddTrialsRequest(study="w")
        for i in range(5000):
            req.trials.add(prompt=pb.Prompt(vector=[i / 5000] * 6), value=float(i))
        t = time.monotonic()
        out["add_trials_5000"] = {"code": _code(stub.AddTrials, req, timeout=120),
                                  "s": round(time.monotonic() - t, 2)}
        # 8. a gp suggestion past its deadline
        opts = {"num_initial": 2, "max_batch": 1, "raw_samples": 64, "maxiter": 20}
        stub.CreateStudy(api.CreateStudyRequest(name="g", spec=_soft(2, 3, "gp", **opts)))
        for i in range(4):
            (tr,) = stub.SuggestTrials(api.SuggestTrialsRequest(study="g", count=1)).trials
            stub.CompleteTrial(api.CompleteTrialRequest(study="g", trial_id=tr.id, value=i))
        _code(stub.SuggestTrials, api.SuggestTrialsRequest(study="g", count=1000), timeout=2)
        t = time.monotonic()
        code = _code(stub.GetStudy, api.GetStudyRequest(name="g"), timeout=20)
        out["GetStudy_after_abandoned_suggest"] = {"code": code,
                                                   "s": round(time.monotonic() - t, 2)}
        # 10. lookups of missing names
        before = rss()
        for i in range(30_000):
            _code(stub.GetStudy, api.GetStudyRequest(name=f"missing-{i}"))
        out["missing_lookups_30000_rss_mb_growth"] = rss() - before
        # 11. edge inputs
        out["page_token_2^63"] = _code(stub.ListTrials, api.ListTrialsRequest(
            study="w", page_token=str(2**63)))
        raw = channel.unary_unary("/promptbo.v1.OptimizerService/GetStudy")
        out["malformed_bytes"] = _code(raw, b"\xff\xff\xff\xff", timeout=5)
        out["name_8MB"] = _code(stub.CreateStudy, api.CreateStudyRequest(
            name="n" * (8 * MB), spec=_soft(2, 3)))
        spec = _soft(2, 3)
        spec.lease_seconds = 1e-300
        out["lease_1e-300"] = _code(stub.CreateStudy, api.CreateStudyRequest(
            name="lease", spec=spec))
        # 6. a response over the message limit (a server that stores all 1,000 holds GBs)
        if "response" in skip:
            out["server_rss_mb_end"] = rss()
            return out
        stub.CreateStudy(api.CreateStudyRequest(name="r", spec=_soft(64, 4096)))
        code = _code(stub.SuggestTrials, api.SuggestTrialsRequest(study="r", count=1000,
                                                                  client_id="c"), timeout=60)
        active = stub.GetStudy(api.GetStudyRequest(name="r")).study.active_count
        out["suggest_1000_of_1MB_trials"] = {"code": code, "stored_active": active}
        out["server_rss_mb_end"] = rss()
    finally:
        channel.close()
        server.kill()
        server.wait()
        log.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pythonpath", default="")
    p.add_argument("--skip-response", action="store_true",
                   help="stop before the oversized-response scenario (and the ones after it)")
    args = p.parse_args(argv)
    skip = frozenset({"response"} if args.skip_response else ())
    with tempfile.TemporaryDirectory(prefix="promptbo-hostile-") as tmp:
        print(json.dumps(run(args.pythonpath, Path(tmp), skip), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
