"""The ``promptbo`` command line.

::

    promptbo serve  [--storage URL] [--host H] [--port P] [--auth-token-file F]
                    [--tls-cert C --tls-key K] [--prefetch N] [--max-workers N]
    promptbo study  list | show NAME | best NAME | trials NAME | delete NAME   [--server H:P]
    promptbo worker --study NAME --evaluator KIND [-o key=value ...] [--server H:P]
    promptbo demo   [--trials N] [--strategy S]

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

from promptbo.client import DEFAULT_ADDRESS, Client
from promptbo.errors import PromptboError
from promptbo.v1 import resources_pb2 as pb


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptbo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the optimizer server")
    p.add_argument("--storage", default="sqlite:///promptbo.db",
                   help="memory:, sqlite:///FILE or postgresql://USER@HOST/DB")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    p.add_argument("--port-file", default="", help="write the bound port here once serving")
    p.add_argument("--max-message-mb", type=int, default=64)
    p.add_argument("--auth-token-file", help="require this bearer token on every RPC")
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    p.add_argument("--prefetch", type=int, default=2,
                   help="suggestions kept ready per study, computed in the background "
                        "(0: on demand, bit-for-bit reproducible)")
    p.add_argument("--max-workers", type=int, default=32,
                   help="threads for calls that do not run on the event loop")

    p = sub.add_parser("study", help="inspect and manage studies")
    _add_connection_args(p)
    p.add_argument("action", choices=("list", "show", "best", "trials", "delete"))
    p.add_argument("name", nargs="?")
    p.add_argument("--state", choices=("active", "completed", "failed"))
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("worker", help="evaluate a study's trials with an evaluator")
    _add_connection_args(p)
    p.add_argument("--study", required=True)
    p.add_argument("--evaluator", required=True, help="hf-causal, hf-mlm, openai, python, command")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluator option (repeatable)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--max-trials", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group(
        "creating the study",
        "with --prompt-length the worker uploads the evaluator's vocabulary and creates the "
        "study if it does not exist (an existing study of that name must have the same spec)",
    )
    g.add_argument("--prompt-length", type=int, default=0, help="tokens (or vectors) per prompt")
    g.add_argument("--soft", action="store_true", help="a soft-prompt study (vectors)")
    g.add_argument("--intrinsic-dim", type=int, default=0, help="soft: random subspace size")
    g.add_argument("--strategy", default="gp")
    g.add_argument("--trials", type=int, default=0, help="the study's budget (0: none)")
    g.add_argument("--top-n", type=int, default=0,
                   help="hard: search only the N most frequent whole-word tokens")
    g.add_argument("--top-n-texts", default="", metavar="PATH",
                   help="hard, with --top-n: rank words by how often they occur in this file's "
                        "texts (the training data: string fields of a .jsonl, else lines) "
                        "instead of by BPE merge order")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--pool", action="store_true",
                   help="fidelity: the evaluator's examples (e.g. -o split=pool) are the study's "
                        "labeled pool; the server picks each trial's examples")
    g.add_argument("--max-examples", type=int, default=0,
                   help="with --pool: the budget in scored examples (0: none)")
    g.add_argument("--examples-per-trial", type=int, default=0,
                   help="with --pool: examples per trial for strategies that do not choose "
                        "(0: the whole pool; the mf strategy chooses)")
    p.add_argument("--no-reference", action="store_true",
                   help="do not score the unprompted model as the study's reference")

    p = sub.add_parser(
        "select", help="re-score a study's best prompts on another split and rank them",
        description="Scores the study's --top best distinct prompts with an evaluator on "
        "examples the search never saw (-o split=dev by default) and ranks them by that score.")
    _add_connection_args(p)
    p.add_argument("--study", required=True)
    p.add_argument("--evaluator", required=True, help="hf-causal, hf-mlm, openai, python, command")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluator option, as for the worker (split: dev unless given)")
    p.add_argument("--top", type=int, default=5, help="best prompts to re-score")
    p.add_argument("--unprompted", action="store_true", help="also score the empty prompt")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("demo", help="optimize a prompt for SmolLM2 on a small sentiment set")
    p.add_argument("--trials", type=int, default=0, help="a trial budget too (0: none)")
    p.add_argument("--examples", type=int, default=320,
                   help="the budget in scored examples (the pool holds 32 reviews)")
    p.add_argument("--strategy", default="mf")
    p.add_argument("--prompt-length", type=int, default=4)
    p.add_argument("--storage", default="", help="default: a SQLite file in a temp dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default="", help="write a convergence plot (PNG) here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level, args.log_format)
    try:
        return _COMMANDS[args.command](args)
    except PromptboError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _serve(args) -> int:
    from promptbo.server.app import ServerOptions, serve

    opts = ServerOptions(
        host=args.host, port=args.port, max_message_bytes=args.max_message_mb * 1024 * 1024,
        auth_token=_read_secret(args.auth_token_file), tls_cert=args.tls_cert,
        tls_key=args.tls_key, prefetch=args.prefetch, max_workers=args.max_workers,
    )
    serve(args.storage, opts, port_file=args.port_file)
    return 0


def _study(args) -> int:
    client = _client(args)
    if args.action == "list":
        studies = client.list_studies()
        if args.json:
            print(json.dumps([_study_dict(s.info) for s in studies], indent=2))
        for s in studies if not args.json else []:
            i = s.info
            top = f"{i.best_trial.value:.4f}" if i.HasField("best_trial") else "-"
            state = "completed" if s.done else "active"
            print(f"{s.name:30s} {state:9s} {i.completed_count:5d} done "
                  f"{i.active_count:3d} active {i.failed_count:3d} failed  best {top}")
        return 0
    if not args.name:
        raise SystemExit(f"error: promptbo study {args.action} needs a study NAME")
    if args.action == "delete":
        client.delete_study(args.name)
        print(f"deleted study {args.name}")
        return 0
    study = client.get_study(args.name)
    if args.action == "best":
        best = study.best_trial()
        if best is None:
            print("no completed trial yet")
            return 1
        _print_trial(best, args.json)
        if not args.json:
            _print_recommendation(study)
        return 0
    if args.action == "show":
        i = study.info
        if args.json:
            print(json.dumps(_study_dict(i), indent=2))
        else:
            print(f"study {i.name}: {'completed' if study.done else 'active'}, "
                  f"strategy {i.spec.strategy}, {i.trial_count} trials "
                  f"({i.completed_count} completed, {i.active_count} active, "
                  f"{i.failed_count} failed)")
    for t in study.trials(state=args.state):
        _print_trial(t, args.json)
    return 0


def _study_dict(info) -> dict:
    from google.protobuf.json_format import MessageToDict

    d = MessageToDict(info)
    for key in ("spec",):
        d.get(key, {}).get("hard", {}).get("filter", {}).get("topN", {}).pop("scores", None)
    return d


def _print_trial(t, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "id": t.id, "state": t.state, "value": t.value, "metrics": t.metrics,
            "text": t.prompt.text, "token_ids": list(t.prompt.token_ids),
            "failure_reason": t.failure_reason, "source": t.source,
        }))
        return
    what = _prompt_label(t.prompt)
    value = "" if t.value is None else f"{t.value:.4f}"
    extra = " ".join(f"{k}={v:.4g}" for k, v in sorted(t.metrics.items()))
    reason = f" ({t.failure_reason})" if t.failure_reason else ""
    print(f"{t.id:5d} {t.state:9s} {value:>9s} {what} {extra}{reason}")


def _prompt_label(prompt) -> str:
    if prompt.vector is not None:
        return f"<soft {prompt.vector.shape}>"
    return repr(prompt.text)


def parse_options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"error: evaluator option {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = value
    return out


def _worker(args) -> int:
    from promptbo.errors import InvalidArgumentError
    from promptbo.evaluators import create_evaluator
    from promptbo.worker import Worker, print_progress

    # Checked before the model loads: it depends on the flags only.
    if args.top_n_texts and not (args.top_n and args.prompt_length > 0 and not args.soft):
        raise InvalidArgumentError(
            "--top-n-texts ranks the candidates of a new hard-prompt study: pass it with "
            "--prompt-length and --top-n (and without --soft)"
        )
    client = _client(args)
    client.wait_ready(timeout=60)
    evaluator = create_evaluator(args.evaluator, **parse_options(args.option))
    try:
        study = _worker_study(client, evaluator, args)
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
    print(f"worker done: {stats.completed} completed, {stats.failed} failed, "
          f"best {stats.best_value:.4f} in {stats.seconds:.1f}s")
    if stats.completed:
        _print_recommendation(study)
    return 0


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


def _worker_study(client: Client, evaluator, args):
    """The worker's study: fetched, or (with --prompt-length) created from the evaluator."""
    from promptbo.client import HardPromptSpace, SoftPromptSpace
    from promptbo.errors import InvalidArgumentError, NotFoundError
    from promptbo.wordlists import read_texts, text_word_scores, word_scores

    if args.prompt_length <= 0:
        try:
            return client.get_study(args.study)
        except NotFoundError as err:
            raise NotFoundError(
                f"{err}; create it from Python, or pass --prompt-length N (and --strategy, "
                "--trials) to let this worker create it"
            ) from None
    if args.soft:
        shape = evaluator.soft_prompt_shape()
        if shape is None:
            raise InvalidArgumentError(
                f"evaluator {args.evaluator!r} does not take soft prompts; drop --soft"
            )
        dim, std = shape
        space: HardPromptSpace | SoftPromptSpace = SoftPromptSpace(
            args.prompt_length, dim, intrinsic_dim=args.intrinsic_dim, embedding_std=std
        )
    else:
        table = evaluator.vocabulary()
        vocab_id = client.upload_vocabulary(table)
        if args.top_n:
            if args.top_n_texts:
                try:
                    texts = read_texts(args.top_n_texts)
                except (OSError, ValueError) as err:
                    raise InvalidArgumentError(f"--top-n-texts: {err}") from None
                scores = text_word_scores(table.tokens, texts)
            else:
                scores = word_scores(table.tokens, table.token_ids)
            space = HardPromptSpace(
                args.prompt_length, vocab_id, top_n=args.top_n, top_n_scores=scores.tolist()
            )
        else:
            space = HardPromptSpace(args.prompt_length, vocab_id)
    pool = 0
    if args.pool:
        pool = len(getattr(getattr(evaluator, "task", None), "examples", ()))
        if not pool:
            raise InvalidArgumentError(
                f"--pool needs an evaluator with a task's examples (hf-causal, hf-mlm, "
                f"openai); {args.evaluator!r} has none"
            )
    elif args.max_examples or args.examples_per_trial:
        raise InvalidArgumentError("--max-examples and --examples-per-trial need --pool")
    return client.create_study(
        args.study, space, strategy=args.strategy, max_trials=args.trials, seed=args.seed,
        pool_size=pool, max_examples=args.max_examples,
        examples_per_trial=args.examples_per_trial,
    )


def _install_stop_handlers(worker) -> None:
    def on_signal(signum, frame):
        print("\nstopping after the current batch (again to abort)", file=sys.stderr)
        worker.stop()
        if worker._abort.is_set():
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _select(args) -> int:
    import inspect

    from promptbo.errors import InvalidArgumentError
    from promptbo.evaluators import create_evaluator, get_evaluator
    from promptbo.selection import _key, candidates, rescore

    options = parse_options(args.option)
    if "split" in inspect.signature(get_evaluator(args.evaluator).__init__).parameters:
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


_COMMANDS = {"serve": _serve, "study": _study, "worker": _worker, "select": _select,
             "demo": _demo}

if __name__ == "__main__":
    sys.exit(main())
