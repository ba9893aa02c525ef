"""The ``promptbo`` command line against a real server on port 0: creating studies with
every spec option, the python evaluator's studies, the recorded scoring setup, extending
a study, output formats, and errors that are one clear line."""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest

import promptbo
from promptbo.cli import build_parser, main
from promptbo.server.app import ServerOptions, create_server
from promptbo.v1 import resources_pb2 as pb

SCORING = '''
def score(prompts, data="", offset="0"):
    out = []
    for p in prompts:
        if p.vector is not None:
            out.append(-float(((p.vector - 0.3) ** 2).sum()) + float(offset))
        else:
            out.append({"value": -abs(len(p.text) - 8) + float(offset),
                        "metrics": {"length": len(p.text)}})
    return out
'''


@pytest.fixture
def address(tmp_path):
    server, port, manager = create_server(f"sqlite:///{tmp_path / 'cli.db'}", ServerOptions(port=0))
    yield f"127.0.0.1:{port}"
    server.stop(0)
    manager.close()


@pytest.fixture
def scoring(tmp_path) -> str:
    path = tmp_path / "my_scoring.py"
    path.write_text(SCORING)
    return f"{path}:score"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse and the commands' own usage errors
        rc = exc.code if isinstance(exc.code, int) else 2
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return rc, out, err


def run(*argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "promptbo.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, **kw)


def test_study_create_takes_every_spec_option(address, capsys):
    rc, out, err = cli(
        capsys, "study", "create", "full", "--server", address, "--soft", "--prompt-length", "3",
        "--embedding-dim", "8", "--embedding-std", "0.5", "--intrinsic-dim", "4",
        "--strategy", "gp", "--strategy-option", "num_initial=3", "--trials", "12",
        "--max-active-trials", "2", "--lease-seconds", "30", "--goal", "minimize",
        "--objective", "loss", "--seed", "7", "--label", "team=nlp")
    assert rc == 0, err
    assert "soft, 3 x 8 (subspace 4), strategy gp, minimize loss, budget 12" in out
    with promptbo.Client(address) as client:
        spec = client.get_study("full").info.spec
    assert (spec.soft.prompt_length, spec.soft.embedding_dim, spec.soft.intrinsic_dim) == (3, 8, 4)
    assert spec.soft.embedding_std == pytest.approx(0.5)
    assert dict(spec.strategy_options) == {"num_initial": "3"}
    assert (spec.max_trials, spec.max_active_trials, spec.lease_seconds) == (12, 2, 30.0)
    assert (spec.goal, spec.objective, spec.seed) == (pb.GOAL_MINIMIZE, "loss", 7)
    assert dict(spec.labels) == {"team": "nlp"}
    # The same again is the same study; another budget names the field and the fix.
    assert cli(capsys, "study", "create", "full", "--server", address, "--soft",
               "--prompt-length", "3", "--embedding-dim", "8", "--embedding-std", "0.5",
               "--intrinsic-dim", "4", "--strategy-option", "num_initial=3", "--trials", "12",
               "--max-active-trials", "2", "--lease-seconds", "30", "--goal", "minimize",
               "--objective", "loss", "--seed", "7", "--label", "team=nlp")[0] == 0
    rc, _, err = cli(capsys, "study", "create", "full", "--server", address, "--soft",
                     "--prompt-length", "3", "--embedding-dim", "8", "--trials", "40")
    assert rc == 2
    assert "soft.intrinsic_dim: 4 there, 0 here" in err and "max_trials: 12 there, 40 here" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = cli(capsys, "study", "create", "full", "--server", address, "--soft",
                     "--prompt-length", "3", "--embedding-dim", "8", "--embedding-std", "0.5",
                     "--intrinsic-dim", "4", "--strategy-option", "num_initial=3", "--trials",
                     "40", "--max-active-trials", "2", "--lease-seconds", "30", "--goal",
                     "minimize", "--objective", "loss", "--seed", "7", "--label", "team=nlp")
    assert rc == 2 and "different spec: max_trials: 12 there, 40 here" in err
    assert "promptbo study update full --max-trials N" in err


@pytest.mark.parametrize("flags, message", [
    (["--soft", "--embedding-dim", "4", "--strategy", "bayes"], "unknown strategy 'bayes'"),
    (["--soft", "--embedding-dim", "4", "--strategy", "gp", "--strategy-option", "nope=1"],
     "has no option nope"),
    (["--soft", "--top-n", "5"], "--top-n apply to hard prompts"),
    (["--embedding-dim", "5"], "--embedding-dim apply to soft prompts: add --soft"),
    (["--soft"], "needs its vector size: pass --embedding-dim"),
    ([], "a hard-prompt study needs a vocabulary"),
    (["--soft", "--embedding-dim", "4", "--label", "promptbo.setup/model=x"], "reserved"),
])
def test_study_create_refuses_bad_flags_before_loading_anything(address, capsys, flags, message):
    rc, _, err = cli(capsys, "study", "create", "bad", "--server", address,
                     "--prompt-length", "2", *flags)
    assert rc == 2 and message in err, err
    with promptbo.Client(address) as client:
        assert client.list_studies() == []


def test_argparse_refuses_negative_budgets_instantly():
    t0 = time.monotonic()
    done = run("worker", "--study", "x", "--evaluator", "hf-causal", "-o", "model=smollm2",
               "--prompt-length", "3", "--trials", "-1", "--server", "127.0.0.1:1")
    assert done.returncode == 2
    assert "argument --trials: must be 0 or more, got -1" in done.stderr
    assert time.monotonic() - t0 < 20  # an interpreter start, no model, no server


def test_python_evaluator_soft_study_from_the_cli(address, capsys, scoring):
    rc, out, err = cli(capsys, "worker", "--server", address, "--study", "py-soft",
                       "--evaluator", "python", "-o", f"function={scoring}", "--soft",
                       "--embedding-dim", "4", "--prompt-length", "2", "--trials", "5",
                       "--strategy", "random", "--quiet")
    assert rc == 0, err
    assert "5 completed" in out
    # The summary names the best trial, its value and what the number is.
    with promptbo.Client(address) as client:
        best = client.get_study("py-soft").best_trial()
    assert f"best trial {best.id} (objective 'value', higher is better)" in out
    assert "prompt:  <soft (2, 4)>" in out and f"value:   {best.value:.4f}" in out


def test_a_worker_with_another_setup_is_refused_unless_forced(address, capsys, scoring,
                                                              tmp_path):
    sst2, subj = tmp_path / "sst2.jsonl", tmp_path / "subj.jsonl"
    sst2.write_text('{"text": "great", "label": 1}\n')
    subj.write_text('{"text": "it is raining", "label": 0}\n')
    create = ("--server", address, "--study", "mixed", "--evaluator", "python", "-o",
              f"function={scoring}", "--soft", "--embedding-dim", "4", "--prompt-length", "2",
              "--trials", "6", "--strategy", "random", "--quiet", "--max-trials", "2")
    assert cli(capsys, "worker", *create, "-o", f"data={sst2}")[0] == 0
    with promptbo.Client(address) as client:
        labels = dict(client.get_study("mixed").info.spec.labels)
    assert labels["promptbo.setup/evaluator"] == "python"
    assert labels["promptbo.setup/data"].startswith("sha256:")
    # Joining with the same data elsewhere (a copy: same content) is fine.
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(sst2.read_bytes())
    join = ("--server", address, "--study", "mixed", "--evaluator", "python", "-o",
            f"function={scoring}", "--quiet", "--max-trials", "2")
    assert cli(capsys, "worker", *join, "-o", f"data={copy}")[0] == 0
    rc, _, err = cli(capsys, "worker", *join, "-o", f"data={subj}")
    assert rc == 2
    assert "scored by another setup: data: 'sha256:" in err and "--force" in err
    rc, _, err = cli(capsys, "worker", *join, "-o", f"data={sst2}", "-o", "offset=1")
    assert rc == 2 and "offset: '(not set)' in the study, '1' here" in err
    with promptbo.Client(address) as client:
        assert client.get_study("mixed").info.completed_count == 4
    assert cli(capsys, "worker", *join, "-o", f"data={subj}", "--force")[0] == 0


def test_a_completed_study_says_so_and_can_be_extended(address, capsys, scoring):
    args = ("worker", "--server", address, "--study", "ext", "--evaluator", "python", "-o",
            f"function={scoring}", "--soft", "--embedding-dim", "2", "--prompt-length", "1",
            "--strategy", "random", "--quiet")
    assert cli(capsys, *args, "--trials", "3")[0] == 0
    rc, out, err = cli(capsys, *args, "--trials", "3")
    assert rc == 0 and "study ext already completed (3 of 3 trials)" in err
    assert "promptbo study update ext --max-trials N" in err and "best -inf" not in out
    rc, _, err = cli(capsys, *args, "--trials", "5")
    assert rc == 2 and "max_trials: 3 there, 5 here" in err
    rc, _, err = cli(capsys, *args[:9], "--trials", "5")  # without --prompt-length
    assert rc == 2 and "--trials describe a new study: add --prompt-length N" in err
    rc, out, _ = cli(capsys, "study", "update", "ext", "--server", address, "--max-trials", "5")
    assert rc == 0 and "study ext: active, max_trials 5" in out
    rc, out, _ = cli(capsys, *args[:9], "--quiet")
    assert rc == 0 and "2 completed" in out and "5 completed of 5" in out
    rc, _, err = cli(capsys, "study", "update", "ext", "--server", address, "--max-trials", "1")
    assert rc == 2 and "below the 5 trials" in err


def test_delete_asks_unless_yes(address, capsys, monkeypatch):
    with promptbo.Client(address) as client:
        client.create_study("gone", promptbo.SoftPromptSpace(1, 2), strategy="random")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    rc, _, err = cli(capsys, "study", "delete", "gone", "--server", address)
    assert rc == 2 and "pass --yes" in err
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert cli(capsys, "study", "delete", "gone", "--server", address)[1] == "not deleted\n"
    with promptbo.Client(address) as client:
        assert [s.name for s in client.list_studies()] == ["gone"]
    rc, out, _ = cli(capsys, "study", "delete", "gone", "--server", address, "--yes")
    assert rc == 0 and out == "deleted study gone\n"
    with promptbo.Client(address) as client:
        assert client.list_studies() == []


def test_outputs_csv_json_snake_case_plot_and_escaped_names(address, capsys, scoring, tmp_path):
    name = "odd\x1b[31mname\x07"
    assert cli(capsys, "worker", "--server", address, "--study", name, "--evaluator", "python",
               "-o", f"function={scoring}", "--soft", "--embedding-dim", "2", "--prompt-length",
               "1", "--trials", "4", "--strategy", "random", "--quiet")[0] == 0
    rc, out, _ = cli(capsys, "study", "list", "--server", address)
    assert rc == 0 and "\x1b" not in out and "\x07" not in out
    assert "odd\\x1b[31mname\\x07" in out
    rc, out, _ = cli(capsys, "study", "trials", name, "--server", address, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 4 and {r["state"] for r in rows} == {"completed"}
    assert all(float(r["value"]) <= 0 for r in rows)
    rc, out, _ = cli(capsys, "study", "trials", name, "--server", address, "--format", "json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [1, 2, 3, 4]
    rc, out, _ = cli(capsys, "study", "show", name, "--server", address, "--json")
    shown = json.loads(out)
    assert shown["completed_count"] == 4 and shown["spec"]["max_trials"] == 4
    assert "completedCount" not in out and "maxTrials" not in out
    png = tmp_path / "conv.png"
    rc, out, _ = cli(capsys, "study", "plot", name, "--server", address, "-o", str(png))
    assert rc == 0 and "4 completed trials" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_log_format_is_accepted_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["serve", "--log-format", "json"]).log_format == "json"
    assert parser.parse_args(["--log-format", "json", "serve"]).log_format == "json"
    assert parser.parse_args(["serve"]).log_format == "text"
    assert parser.parse_args(["study", "list", "--log-level", "debug"]).log_level == "debug"


def test_errors_are_one_line(tmp_path, address):
    # No server: a quick, clear line for study list and worker.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = f"127.0.0.1:{s.getsockname()[1]}"
    t0 = time.monotonic()
    listed = run("study", "list", "--server", free)
    worker = run("worker", "--server", free, "--study", "x", "--evaluator", "python", "-o",
                 "function=os:getcwd", "--connect-timeout", "1")
    assert time.monotonic() - t0 < 40
    assert worker.stderr.startswith(f"waiting up to 1s for the promptbo server at {free}")
    for done in (listed, worker):
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1:] == [
            f"error: no promptbo server answers at {free}; start one with 'promptbo serve', "
            "or pass --server HOST:PORT (or set PROMPTBO_SERVER)"]
    # A port in use: one line, and no database created.
    port = address.rsplit(":", 1)[1]
    db = tmp_path / "never.db"
    served = run("serve", "--port", port, "--storage", f"sqlite:///{db}")
    assert served.returncode != 0 and "Traceback" not in served.stderr
    assert served.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use); stop the program "
        "using it or pass --port N (0 picks a free port)"]
    assert not db.exists()
    # A misspelled model folder: refused at once, before anything loads.
    t0 = time.monotonic()
    typo = run("worker", "--server", address, "--study", "m", "--evaluator", "hf-causal",
               "-o", "model=./smolm2-typo", "--prompt-length", "2",
               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "model './smolm2-typo': no such folder" in typo.stderr
    assert time.monotonic() - t0 < 60


def test_trials_piped_into_head_ends_quietly(address, tmp_path, scoring):
    with promptbo.Client(address) as client:
        study = client.create_study("many", promptbo.SoftPromptSpace(1, 2), strategy="random")
        for t in study.ask(300):
            study.tell(t, 0.5)
    piped = subprocess.run(
        f"{sys.executable} -m promptbo.cli study trials many --server {address} | head -2",
        shell=True, capture_output=True, text=True, timeout=60)
    assert len(piped.stdout.splitlines()) == 2
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr



def test_the_client_finds_the_server_in_promptbo_server(monkeypatch, address):
    monkeypatch.setenv("PROMPTBO_SERVER", address)
    with promptbo.Client() as client:
        assert client.target == address
        assert client.list_studies() == []
    monkeypatch.delenv("PROMPTBO_SERVER")
    assert promptbo.Client().target == "127.0.0.1:50051"


def test_show_prints_the_recorded_setup(address, capsys, scoring):
    assert cli(capsys, "study", "create", "rec", "--server", address, "--soft",
               "--prompt-length", "2", "--embedding-dim", "3", "--evaluator", "python",
               "-o", f"function={scoring}", "-o", "offset=2")[0] == 0
    rc, out, _ = cli(capsys, "study", "show", "rec", "--server", address)
    assert rc == 0 and "study rec: active, strategy gp, 0 trials" in out
    assert "scored by: evaluator=python, function=sha256:" in out and "offset=2" in out


def test_the_first_worker_records_the_setup_of_a_study_made_elsewhere(address, capsys, scoring,
                                                                       tmp_path):
    with promptbo.Client(address) as client:
        client.create_study("plain", promptbo.SoftPromptSpace(1, 2), strategy="random",
                            max_trials=4, labels={"team": "nlp"})
    join = ("worker", "--server", address, "--study", "plain", "--evaluator", "python", "-o",
            f"function={scoring}", "--quiet", "--max-trials", "1")
    assert cli(capsys, *join)[0] == 0
    with promptbo.Client(address) as client:
        labels = dict(client.get_study("plain").info.spec.labels)
    assert labels["team"] == "nlp" and labels["promptbo.setup/evaluator"] == "python"
    rc, _, err = cli(capsys, *join, "-o", "offset=3")
    assert rc == 2 and "offset: '(not set)' in the study, '3' here" in err


def test_transfer_from_on_worker_and_study_create(address, capsys, scoring):
    common = ["--evaluator", "python", "-o", f"function={scoring}", "--soft", "--embedding-dim",
              "2", "--prompt-length", "1", "--quiet"]
    assert cli(capsys, "worker", "--server", address, "--study", "src", *common, "--trials",
               "12", "--strategy", "random")[0] == 0
    rc, _, err = cli(capsys, "study", "create", "bad", "--server", address, "--soft",
                     "--embedding-dim", "2", "--prompt-length", "1", "--transfer-from", "src,nope")
    assert rc != 0 and "transfer source study 'nope' not found" in err
    rc, out, err = cli(capsys, "study", "create", "made", "--server", address, "--soft",
                       "--embedding-dim", "2", "--prompt-length", "1", "--transfer-from", "src",
                       "--transfer", "init")
    assert rc == 0, err
    assert "transfer (init) from src" in out
    assert cli(capsys, "worker", "--server", address, "--study", "tgt", *common, "--trials", "8",
               "--transfer-from", "src")[0] == 0
    rc, out, _ = cli(capsys, "study", "show", "tgt", "--server", address)
    assert rc == 0 and "transfer (both) from:" in out
    assert "  src: weight " in out and ", 12 trials" in out
    # The transferred trials (the even slots of the 5-slot initial design) are marked.
    assert out.count("[transfer]") == 3
    rc, out, _ = cli(capsys, "study", "show", "tgt", "--server", address, "--json")
    (source,) = json.loads(out)["transfer_sources"]
    assert source["study"] == "src" and source["trials"] == 12
