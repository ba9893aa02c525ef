"""The ``promptbo`` command line.

::

    promptbo serve  [--storage URL] [--host H] [--port P] [--auth-token-file F]
                    [--tls-cert C --tls-key K] [--prefetch N] [--max-workers N]
                    [--suggest-workers N] [--suggest-pool {process,thread,ray}]
                    [--ray-address ADDR]
    promptbo study  list | show NAME | best NAME | trials NAME | plot NAME -o F.png
                    | create NAME [spec flags] | update NAME --max-trials N | delete NAME
                    [--server H:P]
    promptbo worker --study NAME --evaluator KIND [-o key=value ...] [spec flags] [--force]
    promptbo demo   [--trials N] [--strategy S]
    promptbo admin  check --storage URL [--json]

Server-side commands import the server extra lazily; the study commands need only the
client. Logging is configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from promptbo.admin import add_admin_parser, admin_command
from promptbo.client import DEFAULT_ADDRESS, Client, Study
from promptbo.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PromptboError,
    UnavailableError,
)
from promptbo.v1 import resources_pb2 as pb

log = logging.getLogger(__name__)


#: An epilog that help shows as every evaluator's declared options.
EVALUATOR_OPTIONS = "(evaluator options)"


class _EvaluatorOptionsFormatter(argparse.HelpFormatter):
    """Shows the epilog :data:`EVALUATOR_OPTIONS` as the evaluators' option listing, built
    only when help is printed (it loads the evaluator plug-ins)."""

    def add_text(self, text: str | None) -> None:
        if text is not EVALUATOR_OPTIONS:
            super().add_text(text)
            return
        from promptbo.evaluators.base import describe_evaluators

        listing = describe_evaluators()
        self._add_item(lambda: listing + "\n", [])


def _configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _read_secret(path: str | None) -> str:
    if not path:
        return ""
    token = Path(path).read_text().strip()
    if not token:
        raise SystemExit(f"error: the token file {path} is empty")
    return token


def _client(args) -> Client:
    token = _read_secret(getattr(args, "token_file", None)) or None
    return Client(args.server, token=token, ca_file=getattr(args, "ca_file", None) or None)


def _add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("PROMPTBO_SERVER", DEFAULT_ADDRESS),
                   help="host:port of the server (env PROMPTBO_SERVER)")
    p.add_argument("--token-file", help="file holding the bearer token (or env PROMPTBO_TOKEN)")
    p.add_argument("--ca-file", help="PEM CA certificate; enables TLS")


def _logging_parent(top: bool) -> argparse.ArgumentParser:
    """--log-level/--log-format, accepted before and after the subcommand (a subcommand's
    copy has no default, so it keeps what was given before it)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--log-level", default="info" if top else argparse.SUPPRESS)
    p.add_argument("--log-format", choices=("text", "json"),
                   default="text" if top else argparse.SUPPRESS)
    return p


def build_parser() -> argparse.ArgumentParser:
    from promptbo.studyspec import add_spec_arguments

    parser = argparse.ArgumentParser(prog="promptbo", description=__doc__.split("\n\n")[0],
                                     parents=[_logging_parent(True)])
    sub = parser.add_subparsers(dest="command", required=True)
    logs = [_logging_parent(False)]

    p = sub.add_parser("serve", help="run the optimizer server", parents=logs)
    p.add_argument("--storage", default="sqlite:///promptbo.db",
                   help="memory:, sqlite:///FILE or postgresql://USER@HOST/DB")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--port-file", default="", help="write the bound port here once serving")
    p.add_argument("--shared-storage", action="store_true",
                   help="other servers write this SQLite database too (replicas; "
                        "PostgreSQL always is shared)")
    p.add_argument("--max-message-mb", type=int, default=64)
    p.add_argument("--auth-token-file", help="require this bearer token on every RPC")
    p.add_argument("--principals-file", default="",
                   help="JSON file of named tokens with roles and study prefixes "
                        "(see docs/operations.md); replaces --auth-token-file")
    p.add_argument("--max-study-mb", type=int, default=1024,
                   help="refuse study specs whose engine would need more memory")
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    p.add_argument("--prefetch", type=int, default=2,
                   help="suggestions kept ready per study, computed in the background "
                        "(0: on demand, bit-for-bit reproducible)")
    p.add_argument("--max-workers", type=int, default=32,
                   help="threads for calls that do not run on the event loop")
    p.add_argument("--suggest-workers", type=int, default=0,
                   help="suggestion computations that run at once, each on "
                        "cores/N torch threads (0, the default: one per available core)")
    p.add_argument("--suggest-pool", choices=("process", "thread", "ray"), default="process",
                   help="where GP-based suggestions compute: worker processes (default), "
                        "threads of the server process, or Ray actors; cheap strategies "
                        "always compute in the server process")
    p.add_argument("--ray-address", default="",
                   help="the Ray cluster of --suggest-pool ray (default: a local one)")
    p.add_argument("--http-port", type=int, default=-1,
                   help="serve the web dashboard and Prometheus /metrics on this port "
                        "(0: a free one; default: off)")

    p = sub.add_parser("study", help="create, inspect and manage studies", parents=logs)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("list", "all studies"), ("show", "a study and its trials"),
                         ("best", "a study's best trial"), ("trials", "a study's trials"),
                         ("plot", "plot a study's convergence to a PNG file"),
                         ("create", "create a study"),
                         ("update", "raise a study's budget or cap on trials in flight"),
                         ("delete", "delete a study and its trials")):
        a = actions.add_parser(action, help=text, parents=logs)
        _add_connection_args(a)
        if action != "list":
            a.add_argument("name", metavar="NAME")
        if action in ("list", "show", "best"):
            a.add_argument("--json", action="store_true", help="machine-readable output")
        if action in ("show", "trials"):
            a.add_argument("--state", choices=("active", "completed", "failed"))
        if action == "trials":
            a.add_argument("--format", choices=("table", "json", "csv"), default="table")
            a.add_argument("--json", action="store_const", dest="format", const="json",
                           help="same as --format json")
        if action == "plot":
            a.add_argument("-o", "--output", required=True, help="the PNG file to write")
        if action == "create":
            g = a.add_argument_group("the study's spec")
            add_spec_arguments(g)
            g = a.add_argument_group(
                "the scoring setup (optional)",
                "with --evaluator the study records what scores it, and workers with another "
                "setup are refused; the evaluator also gives a hard study its vocabulary and "
                "a soft study its vector size (this loads its model)")
            g.add_argument("--evaluator", default="", help="hf-causal, hf-mlm, openai, python, "
                           "command")
            g.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                           help="evaluator option (repeatable)")
        if action == "update":
            a.add_argument("--max-trials", type=int, default=None,
                           help="the new budget of completed trials (0: no limit)")
            a.add_argument("--max-active-trials", type=int, default=None,
                           help="the new cap on trials in flight (0: none)")
        if action == "delete":
            a.add_argument("--yes", "-y", action="store_true", help="do not ask to confirm")

    p = sub.add_parser("worker", help="evaluate a study's trials with an evaluator",
                       parents=logs, epilog=EVALUATOR_OPTIONS,
                       formatter_class=_EvaluatorOptionsFormatter)
    _add_connection_args(p)
    p.add_argument("--study", required=True)
    p.add_argument("--evaluator", required=True, help="hf-causal, hf-mlm, openai, python, command")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluator option (repeatable)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-trials", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true",
                   help="join a study whose recorded scoring setup differs from this worker's")
    p.add_argument("--connect-timeout", type=float, default=30.0,
                   help="seconds to wait for the server")
    g = p.add_argument_group(
        "creating the study",
        "with --prompt-length (or --pool FILE) the worker creates the study if it does not "
        "exist, as promptbo study create would (an existing study must have the same spec)",
    )
    add_spec_arguments(g, for_worker=True)
    p.add_argument("--no-reference", action="store_true",
                   help="do not score the unprompted model as the study's reference")

    p = sub.add_parser(
        "select", help="re-score a study's best prompts on another split and rank them",
        description="Scores the study's --top best distinct prompts with an evaluator on "
        "examples the search never saw (-o split=dev by default) and ranks them by that score.",
        parents=logs, epilog=EVALUATOR_OPTIONS, formatter_class=_EvaluatorOptionsFormatter)
    _add_connection_args(p)
    p.add_argument("--study", required=True)
    p.add_argument("--evaluator", required=True, help="hf-causal, hf-mlm, openai, python, command")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluator option, as for the worker (split: dev unless given)")
    p.add_argument("--top", type=int, default=5, help="best prompts to re-score")
    p.add_argument("--unprompted", action="store_true", help="also score the empty prompt")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("pool", help="build or upload a pool of candidate prompts", parents=logs,
                       description="Builds a pool of readable candidate prompts (instructions, "
                       "label phrases, demonstrations) with their embeddings, for pool studies.")
    _add_connection_args(p)
    from promptbo.evaluators.pools import add_pool_arguments

    add_pool_arguments(p)

    p = sub.add_parser("demo", help="optimize a prompt for SmolLM2 on a small sentiment set",
                       parents=logs)
    p.add_argument("--trials", type=int, default=0, help="a trial budget too (0: none)")
    p.add_argument("--examples", type=int, default=320,
                   help="the budget in scored examples (the pool holds 32 reviews)")
    p.add_argument("--strategy", default="mf")
    p.add_argument("--prompt-length", type=int, default=4)
    p.add_argument("--storage", default="", help="default: a SQLite file in a temp dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="", help="write a convergence plot (PNG) here")
    add_admin_parser(sub, logs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    try:
        return _COMMANDS[args.command](args)
    except UnavailableError as err:
        server = getattr(args, "server", "")
        log.debug("unavailable: %s", err)
        print(f"error: no promptbo server answers at {server}; start one with 'promptbo "
              "serve', or pass --server HOST:PORT (or set PROMPTBO_SERVER)"
              if server else f"error: {_first_line(err)}", file=sys.stderr)
        return 2
    except PromptboError as err:
        print(f"error: {_first_line(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (promptbo study trials | head): not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def safe(text: str) -> str:
    """``text`` with control characters escaped, safe to print to a terminal."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def _serve(args) -> int:
    import socket

    from promptbo.server.auth import Principals

    try:
        principals = Principals.load(args.principals_file) if args.principals_file else None
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: principals file: {err}") from None
    if args.port:  # checked before the storage is opened (or a database file created)
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
            # As gRPC binds: a port whose old connections linger in TIME_WAIT is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((args.host, args.port))
            except OSError as err:
                raise SystemExit(
                    f"error: cannot listen on {args.host}:{args.port} ({err.strerror}); stop "
                    "the program using it or pass --port N (0 picks a free port)"
                ) from None
    from promptbo.server.app import ServerOptions, serve  # torch: after the quick checks
    from promptbo.server.limits import Limits

    opts = ServerOptions(
        host=args.host, port=args.port, max_message_bytes=args.max_message_mb * 1024 * 1024,
        auth_token=_read_secret(args.auth_token_file), tls_cert=args.tls_cert,
        tls_key=args.tls_key, prefetch=args.prefetch, max_workers=args.max_workers,
        limits=Limits(max_study_memory_bytes=args.max_study_mb * 1024 * 1024),
        principals=principals,
        http_port=args.http_port, suggest_workers=args.suggest_workers,
        suggest_pool=args.suggest_pool, ray_address=args.ray_address,
    )
    try:
        serve(args.storage, opts, port_file=args.port_file, shared=args.shared_storage)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    return 0


def _study(args) -> int:
    from promptbo import studyspec

    client = _client(args)
    if args.action == "list":
        studies = client.list_studies()
        if args.json:
            print(json.dumps([_study_dict(s.info) for s in studies], indent=2))
        for s in studies if not args.json else []:
            i = s.info
            top = f"{i.best_trial.value:.4f}" if i.HasField("best_trial") else "-"
            state = "completed" if s.done else "active"
            print(f"{safe(s.name):30s} {state:9s} {i.completed_count:5d} done "
                  f"{i.active_count:3d} active {i.failed_count:3d} failed  best {top}")
        return 0
    name = args.name
    if args.action == "create":
        return _study_create(client, args)
    if args.action == "update":
        if args.max_trials is None and args.max_active_trials is None:
            raise SystemExit("error: give --max-trials N and/or --max-active-trials N")
        study = client.update_study(name, max_trials=args.max_trials,
                                    max_active_trials=args.max_active_trials)
        spec = study.info.spec
        print(f"study {safe(name)}: {'completed' if study.done else 'active'}, "
              f"max_trials {spec.max_trials or 'none'}, "
              f"max_active_trials {spec.max_active_trials or 'none'}, "
              f"{study.info.completed_count} completed")
        return 0
    if args.action == "delete":
        study = client.get_study(name)
        if not args.yes:
            if not sys.stdin.isatty():
                raise SystemExit(f"error: deleting study {safe(name)} needs confirmation; "
                                 "pass --yes")
            answer = input(f"delete study {safe(name)} and its {study.info.trial_count} "
                           "trials? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not deleted")
                return 1
        client.delete_study(name)
        print(f"deleted study {safe(name)}")
        return 0
    study = client.get_study(name)
    if args.action == "best":
        best = study.best_trial()
        if best is None:
            print("no completed trial yet")
            return 1
        _print_trial(best, "json" if args.json else "table")
        if not args.json:
            _print_recommendation(study)
        return 0
    if args.action == "plot":
        from promptbo.plots import plot_study

        count = plot_study(study, args.output)
        print(f"wrote {args.output} ({count} completed trials)")
        return 0
    fmt = getattr(args, "format", None) or ("json" if getattr(args, "json", False) else "table")
    if args.action == "show":
        sources = study.transfer_sources() if study.info.spec.transfer_from else []
        i = study.info
        if fmt == "json":
            doc = _study_dict(i)
            if sources:
                doc["transfer_sources"] = [
                    {"study": s.study, "weight": s.weight, "trials": s.trials, "note": s.note}
                    for s in sources]
            print(json.dumps(doc, indent=2))
            return 0
        print(f"study {safe(i.name)}: {'completed' if study.done else 'active'}, "
              f"strategy {study.spec.strategy}, {i.trial_count} trials "
              f"({i.completed_count} completed, {i.active_count} active, "
              f"{i.failed_count} failed)")
        setup = {k[len(studyspec.SETUP_PREFIX):]: v for k, v in i.spec.labels.items()
                 if k.startswith(studyspec.SETUP_PREFIX)}
        if setup:
            print("scored by: " + ", ".join(f"{k}={safe(v)}" for k, v in sorted(setup.items())))
        if sources:
            print(f"transfer ({study.spec.transfer}) from:")
            for s in sources:
                print(f"  {safe(s.study)}: weight {s.weight:.2f}, {s.trials} trials"
                      + (f" ({safe(s.note)})" if s.note else ""))
    writer = None
    if fmt == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(["id", "state", "value", "text", "token_ids", "metrics",
                         "failure_reason", "source"])
    for t in study.trials(state=args.state):
        if writer is not None:
            writer.writerow([t.id, t.state, "" if t.value is None else repr(t.value),
                             t.prompt.text, " ".join(map(str, t.prompt.token_ids)),
                             json.dumps(t.metrics, sort_keys=True), t.failure_reason, t.source])
        else:
            _print_trial(t, fmt)
    return 0


def _study_create(client: Client, args) -> int:
    from promptbo import studyspec

    options = parse_options(args.option)
    if options and not args.evaluator:
        raise SystemExit("error: -o options belong to an evaluator: add --evaluator NAME")
    setup = studyspec.evaluator_setup(args.evaluator, options) if args.evaluator else None
    studyspec.check_spec_arguments(args)
    studyspec.check_vocabulary_source(args, args.evaluator)
    studyspec.validate_study(client, args.name, args, setup)  # before anything loads
    evaluator = None
    needs_model = (not args.pool and not args.soft and not args.vocabulary
                   and not args.vocabulary_id) or (args.soft and not args.embedding_dim) or (
        args.labeled_pool)  # the labeled pool's size is the evaluator's example count
    if args.evaluator and needs_model:
        from promptbo.evaluators import create_evaluator

        evaluator = create_evaluator(args.evaluator, **options)
    try:
        study = studyspec.create_study(client, args.name, args, evaluator, setup)
    finally:
        if evaluator is not None:
            evaluator.close()
    print(f"study {safe(study.name)}: {_describe_spec(study.info.spec)}")
    return 0


def _describe_spec(spec) -> str:
    kind = spec.WhichOneof("space")
    if kind == "soft":
        space = (f"soft, {spec.soft.prompt_length} x {spec.soft.embedding_dim}"
                 + (f" (subspace {spec.soft.intrinsic_dim})" if spec.soft.intrinsic_dim else ""))
    elif kind == "pool":
        space = f"pool {spec.pool.pool_id[:12]}"
    else:
        space = (f"hard, {spec.hard.prompt_length} tokens"
                 + (f" of the top {spec.hard.filter.top_n.n}" if spec.hard.filter.top_n.n
                    else ""))
    goal = "minimize" if spec.goal == pb.GOAL_MINIMIZE else "maximize"
    return (f"{space}, strategy {spec.strategy or 'gp'}, {goal} {spec.objective or 'value'}, "
            f"budget {spec.max_trials or 'none'}"
            + (f", transfer ({spec.transfer or 'both'}) from {', '.join(spec.transfer_from)}"
               if spec.transfer_from else ""))


def _study_dict(info) -> dict:
    """A study as JSON, with the proto's snake_case field names (as ``trials --json``)."""
    from google.protobuf.json_format import MessageToDict

    d = MessageToDict(info, preserving_proto_field_name=True)
    d.get("spec", {}).get("hard", {}).get("filter", {}).get("top_n", {}).pop("scores", None)
    return d


def _print_trial(t, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps({
            "id": t.id, "state": t.state, "value": t.value, "metrics": t.metrics,
            "text": t.prompt.text, "token_ids": list(t.prompt.token_ids),
            "pool_index": t.prompt.pool_index,
            "failure_reason": t.failure_reason, "source": t.source,
        }))
        return
    what = _prompt_label(t.prompt)
    value = "" if t.value is None else f"{t.value:.4f}"
    extra = " ".join(f"{safe(k)}={v:.4g}" for k, v in sorted(t.metrics.items()))
    reason = f" ({safe(t.failure_reason)})" if t.failure_reason else ""
    mark = " [transfer]" if t.source == "transfer" else ""  # a transfer source's prompt
    print(f"{t.id:5d} {t.state:9s} {value:>9s} {what} {extra}{reason}{mark}")


def _prompt_label(prompt) -> str:
    if prompt.vector is not None:
        return f"<soft {prompt.vector.shape}>"
    if prompt.pool_index is not None:
        return f"#{prompt.pool_index} " + safe(repr(prompt.text))
    return safe(repr(prompt.text))


def parse_options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"error: evaluator option {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = value
    return out


def _worker(args) -> int:
    from promptbo import studyspec
    from promptbo.evaluators import create_evaluator
    from promptbo.worker import Worker, print_progress

    # Everything that depends on the flags only is checked before the server is asked,
    # and everything the server can check before the model loads.
    creating = args.prompt_length > 0 or bool(args.pool)
    options = parse_options(args.option)
    setup = studyspec.evaluator_setup(args.evaluator, options)
    if creating:
        studyspec.check_spec_arguments(args)
        studyspec.check_vocabulary_source(args, args.evaluator)
    elif studyspec.given_spec_flags(args):
        raise InvalidArgumentError(
            f"{', '.join(studyspec.given_spec_flags(args))} describe a new study: add "
            "--prompt-length N to create it; to join an existing study drop them (promptbo "
            "study update changes its budget)")
    client = _client(args)
    try:
        client.wait_ready(timeout=min(2.0, args.connect_timeout))
    except UnavailableError:
        print(f"waiting up to {args.connect_timeout:.0f}s for the promptbo server at "
              f"{args.server} ...", file=sys.stderr)
        client.wait_ready(timeout=max(0.0, args.connect_timeout - 2.0))
    try:
        existing: Study | None = client.get_study(args.study)
    except NotFoundError:
        if not creating:
            raise NotFoundError(
                f"study '{safe(args.study)}' not found; create it with 'promptbo study create "
                f"{safe(args.study)} --prompt-length N ...', or pass --prompt-length N (and "
                "--strategy, --trials) to let this worker create it") from None
        existing = None
    if existing is not None:
        differences = studyspec.setup_differences(existing.info.spec.labels, setup)
        if differences and not args.force:
            raise FailedPreconditionError(
                f"study '{safe(args.study)}' is scored by another setup: "
                f"{'; '.join(map(safe, differences))}. Its trials would mix two tasks; use "
                "the study's setup, another study name, or --force to join anyway")
        recorded = {k: v for k, v in existing.info.spec.labels.items()
                    if k.startswith(studyspec.SETUP_PREFIX)}
        if creating:  # the flags must describe the existing study
            studyspec.validate_study(client, args.study, args, recorded)
        if not recorded:  # the first worker of a study made elsewhere records its setup
            existing = client.update_study(
                args.study, labels={**existing.info.spec.labels, **setup})
        if existing.done:
            i = existing.info
            print(f"study {safe(args.study)} already completed ({i.completed_count} of "
                  f"{i.spec.max_trials} trials); raise its budget with 'promptbo study update "
                  f"{safe(args.study)} --max-trials N' to run more", file=sys.stderr)
            return 0
    else:
        studyspec.validate_study(client, args.study, args, setup)
    evaluator = create_evaluator(args.evaluator, **options)
    try:
        study = existing or studyspec.create_study(client, args.study, args, evaluator, setup)
    except BaseException:
        evaluator.close()
        raise
    worker = Worker(
        study, evaluator, batch_size=args.batch_size, max_trials=args.max_trials,
        progress=None if args.quiet else print_progress,
        minimize=study.info.spec.goal == pb.GOAL_MINIMIZE,
        reference=not args.no_reference and _classifies(evaluator),
    )
    _install_stop_handlers(worker)
    try:
        stats = worker.run()
    finally:
        evaluator.close()
    if not args.quiet:
        print(file=sys.stderr)
    print(f"worker done: {stats.completed} completed, {stats.failed} failed "
          f"in {stats.seconds:.1f}s")
    _print_summary(study, options)
    return 0


#: What the built-in task evaluators' value is, by their ``metric`` option.
_METRIC_MEANINGS = {
    "log_prob": "the mean log-probability of the right label word, normalised over the label "
                "words (0 is perfect; log(1/classes) is chance)",
    "accuracy": "the accuracy on the objective examples",
    "macro_f1": "the macro-averaged F1 on the objective examples",
}


def _print_summary(study: Study, options: dict[str, str]) -> None:
    """The study's best trial: its prompt, value, metrics and what the value is."""
    info = study.refresh()
    best = study.best_trial()
    if best is None:
        print(f"study {safe(study.name)}: no completed trial yet")
        return
    spec = info.spec
    goal = "lower" if spec.goal == pb.GOAL_MINIMIZE else "higher"
    objective = spec.objective or "value"
    meaning = f"objective '{safe(objective)}', {goal} is better"
    metric = options.get("metric") or info.spec.labels.get("promptbo.setup/metric", "")
    if objective == "value" and metric:
        meaning += f"; value is {_METRIC_MEANINGS.get(metric, 'the metric ' + safe(metric))}"
    print(f"study {safe(study.name)}: {info.completed_count} completed"
          f"{f' of {spec.max_trials}' if spec.max_trials else ''}; best trial {best.id} "
          f"({meaning})")
    print(f"  prompt:  {_prompt_label(best.prompt)}")
    print(f"  value:   {best.value:.4f}")
    if best.metrics:
        print("  metrics: " + " ".join(f"{safe(k)}={v:.4g}"
                                       for k, v in sorted(best.metrics.items())))
    if info.completed_count:
        _print_recommendation(study)


def _classifies(evaluator) -> bool:
    """Whether the evaluator is a classification task (the built-ins'), whose studies
    record the unprompted model as a reference."""
    return hasattr(getattr(evaluator, "task", None), "label_words")


def _print_recommendation(study) -> None:
    from promptbo.report import recommendation_lines

    spec = study.info.spec
    for line in recommendation_lines(study.recommendation(), spec.goal == pb.GOAL_MINIMIZE,
                                     spec.objective or "value"):
        if line:
            print(line)


def _install_stop_handlers(worker) -> None:
    def on_signal(signum, frame):
        print("\nstopping after the current batch (again to abort)", file=sys.stderr)
        worker.stop()
        if worker._abort.is_set():
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _select(args) -> int:
    from promptbo.errors import InvalidArgumentError
    from promptbo.evaluators import create_evaluator, evaluator_options
    from promptbo.selection import _key, candidates, rescore

    options = parse_options(args.option)
    if any(o.name == "split" for o in evaluator_options(args.evaluator)):
        options.setdefault("split", "dev")  # the built-ins' task evaluators
    if options.get("split") == "objective":
        raise InvalidArgumentError(
            "select re-scores on examples the search did not see: pass -o split=dev, "
            "holdout or test, not objective")
    study = _client(args).get_study(args.study)
    best = candidates(study, args.top)  # before the model loads: bad requests fail fast
    rec = study.recommendation()
    recommended = rec.trial
    if recommended is not None and all(t.id != recommended.id and _key(t.prompt) != _key(
            recommended.prompt) for t in best):
        best.append(recommended)  # re-scored too, beside the best observed ones
    with create_evaluator(args.evaluator, **options) as evaluator:
        ranked = rescore(study, evaluator, unprompted=args.unprompted, trials=best)
    split = options.get("split", "score")
    for r in ranked:
        t = r.trial
        if args.json:
            print(json.dumps({
                "trial": None if t is None else t.id, "objective": r.objective,
                "value": r.score.value, "metrics": r.score.metrics, "text": r.prompt.text,
                "token_ids": list(r.prompt.token_ids), "split": split}))
            continue
        what = "(unprompted)" if t is None else _prompt_label(r.prompt)
        if t is not None and recommended is not None and _key(t.prompt) == _key(
                recommended.prompt):
            what += " (recommended)"
        obj = "-" if r.objective is None else f"{r.objective:.4f}"
        extra = " ".join(f"{k}={v:.4g}" for k, v in sorted(r.score.metrics.items()))
        print(f"{'-' if t is None else t.id:>5} objective {obj:>9} {split} "
              f"{r.score.value:.4f} {what} {extra}")
    if not args.json:
        trial, value = next((r.trial, r.score.value) for r in ranked if r.trial is not None)
        from promptbo.report import recommendation_lines

        spec = study.info.spec
        for line in recommendation_lines(rec, spec.goal == pb.GOAL_MINIMIZE,
                                         spec.objective or "value"):
            if line:
                print(f"study: {line}")
        print(f"selected: trial {trial.id} ({split} {value:.4f})"
              + (" - the unprompted model scores better" if ranked[0].trial is None else ""))
    return 0


def _demo(args) -> int:
    from promptbo.demo import run_demo

    t0 = time.monotonic()
    run_demo(args)
    print(f"demo finished in {time.monotonic() - t0:.0f}s")
    return 0


def _pool(args) -> int:
    from promptbo.evaluators.pools import pool_command

    return pool_command(args, _client)


_COMMANDS = {"serve": _serve, "study": _study, "worker": _worker, "select": _select,
             "demo": _demo, "pool": _pool, "admin": admin_command}

if __name__ == "__main__":
    sys.exit(main())
