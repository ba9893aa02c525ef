"""Study specs from command-line flags, and the evaluator setup a study records.

``promptbo study create`` and ``promptbo worker`` share these flags and this one path::

    add_spec_arguments(parser)            # --prompt-length, --soft, --strategy, --trials, ...
    check_spec_arguments(args)            # flag-only checks: instant
    validate_study(client, name, args)    # the server's checks, before any model loads
    create_study(client, name, args, evaluator=ev, setup=setup)   # may load a vocabulary

The setup of a study is what decides its scores: the evaluator's name and its options
with their defaults filled in (runtime-only ones such as ``batch_size`` or ``device``
left out), data files replaced by a fingerprint of their content. It is stored among
the study's labels under :data:`SETUP_PREFIX`; a worker compares its own setup with it
(:func:`setup_differences`) so that one GP history never mixes two tasks.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from promptbo.client import Client, Study
from promptbo.errors import InvalidArgumentError
from promptbo.spec import MAX_PROMPT_LENGTH, HardPromptSpace, PoolSpace, SoftPromptSpace

#: Labels under this prefix record the evaluator setup (``promptbo.setup/evaluator``, ...).
SETUP_PREFIX = "promptbo.setup/"
#: Evaluator options that change how fast or where scoring runs, not the scores.
RUNTIME_OPTIONS = frozenset({
    "batch_size", "device", "dtype", "concurrency", "max_retries", "backoff", "max_backoff",
    "timeout", "api_key_env", "cwd",
})
#: Options naming files whose content (not path) is recorded.
_FILE_OPTIONS = frozenset({"data", "test_data"})
_PLACEHOLDER_VOCABULARY = "not-uploaded-yet"


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _pairs(pairs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgumentError(f"{flag} {pair!r} is not KEY=VALUE")
        out[key.strip()] = value
    return out


def add_spec_arguments(parser: argparse.ArgumentParser | Any, for_worker: bool = False) -> None:
    """Adds the flags of a study's spec to ``parser`` (or an argument group)."""
    length_help = "tokens (or vectors) per prompt"
    if for_worker:
        length_help += "; with it the worker creates the study if it does not exist"
    parser.add_argument("--prompt-length", type=_count, default=0, help=length_help)
    parser.add_argument("--pool", default="", metavar="FILE",
                        help="a study over this pool of candidate prompts (a file from "
                             "`promptbo pool build`) instead of tokens or vectors")
    parser.add_argument("--soft", action="store_true", help="a soft-prompt study (vectors)")
    parser.add_argument("--embedding-dim", type=_count, default=0,
                        help="soft: vector size (default: the evaluator's model's)")
    parser.add_argument("--embedding-std", type=_positive_float, default=None,
                        help="soft: scale of the model's embeddings (default: the evaluator's, "
                             "else 1.0)")
    parser.add_argument("--intrinsic-dim", type=_count, default=0,
                        help="soft: search a random subspace of this size (0: all L x D)")
    parser.add_argument("--vocabulary", default="", metavar="MODEL",
                        help="hard: the token table of this transformers model (a folder, a hub "
                             "name or smollm2); default: the evaluator's")
    parser.add_argument("--vocabulary-id", default="",
                        help="hard: an already uploaded vocabulary's id")
    parser.add_argument("--vocabulary-size", type=_count, default=0,
                        help="hard, with --vocabulary: keep only the first N tokens")
    parser.add_argument("--pca-dims", type=_count, default=None,
                        help="hard: PCA dimensions per position (default: the server's)")
    parser.add_argument("--top-n", type=_count, default=0,
                        help="hard: search only the N most frequent whole-word tokens")
    parser.add_argument("--top-n-texts", default="", metavar="PATH",
                        help="hard, with --top-n: rank words by how often they occur in this "
                             "file's texts (the training data: string fields of a .jsonl, else "
                             "lines) instead of by BPE merge order")
    parser.add_argument("--strategy", default="gp",
                        help="gp, turbo, random, index, cmaes, ... (checked by the server)")
    parser.add_argument("--strategy-option", action="append", default=[], metavar="KEY=VALUE",
                        help="strategy option (repeatable), e.g. num_initial=10")
    parser.add_argument("--trials", type=_count, default=0,
                        help="the study's budget of completed trials (0: none)")
    parser.add_argument("--max-active-trials", type=_count, default=0,
                        help="cap on trials in flight at once (0: none)")
    parser.add_argument("--lease-seconds", type=_positive_float, default=None,
                        help="lease of a handed-out trial (default: the server's)")
    parser.add_argument("--goal", choices=("maximize", "minimize"), default="maximize")
    parser.add_argument("--objective", default="value",
                        help="what the strategy optimizes: value, or a metric's name")
    parser.add_argument("--seed", type=_count, default=0)
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="a free-form label (repeatable)")
    parser.add_argument("--labeled-pool", action="store_true",
                        help="fidelity: the evaluator's examples (e.g. -o split=pool) are the "
                             "study's labeled pool; the server picks each trial's examples")
    parser.add_argument("--max-examples", type=_count, default=0,
                        help="with --labeled-pool: the budget in scored examples (0: none)")
    parser.add_argument("--examples-per-trial", type=_count, default=0,
                        help="with --labeled-pool: examples per trial for strategies that do "
                             "not choose (0: the whole pool; the mf strategy chooses)")
    parser.add_argument("--transfer-from", default="", metavar="STUDY[,STUDY...]",
                        help="warm-start from these earlier studies of the same space (their "
                             "best prompts first, then a model weighted by how well each "
                             "ranks this study's results)")
    parser.add_argument("--transfer", choices=("both", "init", "surrogate"), default="both",
                        help="with --transfer-from: how the sources are used (default both)")


def given_spec_flags(args: argparse.Namespace) -> list[str]:
    """The spec flags (other than --prompt-length) set to something else than their default."""
    parser = argparse.ArgumentParser(add_help=False)
    add_spec_arguments(parser)
    defaults = vars(parser.parse_args([]))
    return ["--" + key.replace("_", "-") for key, value in defaults.items()
            if key not in ("prompt_length", "pool") and getattr(args, key, value) != value]


def check_spec_arguments(args: argparse.Namespace) -> None:
    """The checks that need only the flags. Raises InvalidArgumentError naming the flag."""
    if args.pool:
        token_flags = [flag for flag, given in (
            ("--prompt-length", args.prompt_length), ("--soft", args.soft),
            ("--vocabulary", args.vocabulary), ("--vocabulary-id", args.vocabulary_id),
            ("--vocabulary-size", args.vocabulary_size), ("--pca-dims", args.pca_dims),
            ("--top-n", args.top_n), ("--top-n-texts", args.top_n_texts),
            ("--embedding-dim", args.embedding_dim), ("--embedding-std", args.embedding_std),
            ("--intrinsic-dim", args.intrinsic_dim)) if given]
        if token_flags:
            raise InvalidArgumentError(
                f"{', '.join(token_flags)} describe token or vector prompts; a --pool study's "
                "prompts are the pool's candidates: drop them")
        if not Path(args.pool).expanduser().is_file():
            raise InvalidArgumentError(f"--pool: no file {args.pool!r} (write one with "
                                       "promptbo pool build)")
    elif not 1 <= args.prompt_length <= MAX_PROMPT_LENGTH:
        raise InvalidArgumentError(
            f"--prompt-length must be in [1, {MAX_PROMPT_LENGTH}], got {args.prompt_length}"
        )
    hard_only = [flag for flag, given in (
        ("--vocabulary", args.vocabulary), ("--vocabulary-id", args.vocabulary_id),
        ("--vocabulary-size", args.vocabulary_size), ("--pca-dims", args.pca_dims),
        ("--top-n", args.top_n), ("--top-n-texts", args.top_n_texts)) if given]
    soft_only = [flag for flag, given in (
        ("--embedding-dim", args.embedding_dim), ("--embedding-std", args.embedding_std),
        ("--intrinsic-dim", args.intrinsic_dim)) if given]
    if args.soft and hard_only:
        raise InvalidArgumentError(f"{', '.join(hard_only)} apply to hard prompts: drop them "
                                   "or drop --soft")
    if not args.soft and soft_only:
        raise InvalidArgumentError(f"{', '.join(soft_only)} apply to soft prompts: add --soft")
    if args.vocabulary and args.vocabulary_id:
        raise InvalidArgumentError("give --vocabulary MODEL or --vocabulary-id ID, not both")
    if args.vocabulary_size and not args.vocabulary:
        raise InvalidArgumentError("--vocabulary-size applies with --vocabulary MODEL")
    if args.top_n and args.vocabulary_id:
        raise InvalidArgumentError(
            "--top-n ranks the tokens of a vocabulary this command loads: use --vocabulary "
            "MODEL (or the evaluator's) instead of --vocabulary-id")
    if args.top_n_texts and not args.top_n:
        raise InvalidArgumentError("--top-n-texts ranks the candidates of --top-n: add --top-n N")
    if args.top_n_texts and not Path(args.top_n_texts).is_file():
        raise InvalidArgumentError(f"--top-n-texts: no file {args.top_n_texts!r}")
    if (args.max_examples or args.examples_per_trial) and not args.labeled_pool:
        raise InvalidArgumentError(
            "--max-examples and --examples-per-trial apply to a study with a labeled pool: "
            "add --labeled-pool")
    if args.max_active_trials and args.trials and args.max_active_trials > args.trials:
        raise InvalidArgumentError(
            f"--max-active-trials {args.max_active_trials} is above --trials {args.trials}")
    _pairs(args.strategy_option, "--strategy-option")
    if args.transfer != "both" and not transfer_names(args):
        raise InvalidArgumentError("--transfer applies with --transfer-from STUDY[,STUDY...]")
    _pairs(args.label, "--label")
    if any(k.startswith(SETUP_PREFIX) for k in _pairs(args.label, "--label")):
        raise InvalidArgumentError(f"labels under {SETUP_PREFIX!r} are reserved for the "
                                   "evaluator setup promptbo records")


def check_vocabulary_source(args: argparse.Namespace, evaluator_name: str) -> None:
    """Refuses, before anything loads, a hard study with no vocabulary to come from:
    neither ``--vocabulary``/``--vocabulary-id`` nor an evaluator that has one."""
    from promptbo.evaluators.base import Evaluator, get_evaluator

    if args.pool or args.soft or args.vocabulary or args.vocabulary_id:
        return
    if evaluator_name and get_evaluator(evaluator_name).vocabulary is not Evaluator.vocabulary:
        return
    raise InvalidArgumentError(
        "a hard-prompt study needs a vocabulary"
        + (f" and evaluator {evaluator_name!r} has none" if evaluator_name else "")
        + ": pass --vocabulary MODEL (e.g. smollm2; prompts are made of that model's tokens), "
        "--vocabulary-id ID, or --soft with --embedding-dim D")


def _spec_kwargs(args: argparse.Namespace, setup: dict[str, str] | None,
                 pool_size: int = 0) -> dict[str, Any]:
    """The settings of :meth:`Client.create_study` the flags give (None: not given)."""
    labels = _pairs(args.label, "--label")
    labels.update(setup or {})
    return dict(
        strategy=args.strategy, strategy_options=_pairs(args.strategy_option, "--strategy-option"),
        goal=args.goal, objective=args.objective, max_trials=args.trials,
        max_active_trials=args.max_active_trials, lease_seconds=args.lease_seconds,
        seed=args.seed, labels=labels, pool_size=pool_size, max_examples=args.max_examples,
        examples_per_trial=args.examples_per_trial, transfer_from=transfer_names(args),
        transfer=args.transfer if transfer_names(args) else None,
    )


def _given(**values: Any) -> dict[str, Any]:
    """The keyword arguments among ``values`` that a flag set (not None)."""
    return {k: v for k, v in values.items() if v is not None}


def _hard_space(args: argparse.Namespace, vocabulary_id: str,
                top_n_scores: list[float]) -> HardPromptSpace:
    return HardPromptSpace(args.prompt_length, vocabulary_id, top_n=args.top_n,
                           top_n_scores=top_n_scores, **_given(pca_dims=args.pca_dims))


def transfer_names(args: argparse.Namespace) -> list[str]:
    """The study names of ``--transfer-from`` (comma-separated)."""
    return [n.strip() for n in getattr(args, "transfer_from", "").split(",") if n.strip()]


def _labeled_pool_size(args: argparse.Namespace, evaluator: Any) -> int:
    """The labeled pool's size: the evaluator task's examples (0 without --labeled-pool)."""
    if not args.labeled_pool:
        return 0
    size = len(getattr(getattr(evaluator, "task", None), "examples", ()))
    if not size:
        raise InvalidArgumentError(
            "--labeled-pool needs an evaluator with a task's examples (hf-causal, hf-mlm, "
            "openai); this one has none")
    return size


def _soft_space(args: argparse.Namespace, evaluator: Any) -> SoftPromptSpace:
    shape = evaluator.soft_prompt_shape() if evaluator is not None else None
    dim, std = args.embedding_dim, args.embedding_std
    if shape is not None:
        if dim and dim != shape[0]:
            raise InvalidArgumentError(
                f"--embedding-dim {dim} differs from the evaluator's model ({shape[0]}); drop it")
        dim, std = shape[0], std or shape[1]
    if not dim:
        raise InvalidArgumentError(
            "a soft-prompt study needs its vector size: pass --embedding-dim D (this evaluator "
            "does not know one)")
    return SoftPromptSpace(args.prompt_length, dim, intrinsic_dim=args.intrinsic_dim,
                           **_given(embedding_std=std))


def _upload_pool(client: Client, path: str) -> str:
    """Uploads the pool file at ``path`` (a no-op when the server has it); its id."""
    from promptbo.evaluators.pools import load_pool

    return client.upload_pool(load_pool(path))


def validate_study(client: Client, name: str, args: argparse.Namespace,
                   setup: dict[str, str] | None = None) -> Study:
    """Asks the server to check the study these flags describe (name, ranges, strategy and
    options; an existing study must have an equal spec), creating nothing and loading no
    model. Returns the handle the server describes. Raises the server's errors."""
    check_spec_arguments(args)
    space: HardPromptSpace | SoftPromptSpace | PoolSpace
    if args.pool:  # an upload, not a model load: the pool's id is its content hash
        space = PoolSpace(_upload_pool(client, args.pool))
    elif args.soft:
        space = SoftPromptSpace(args.prompt_length, args.embedding_dim or 1,
                                intrinsic_dim=args.intrinsic_dim,
                                **_given(embedding_std=args.embedding_std))
    else:
        space = _hard_space(args, args.vocabulary_id or _PLACEHOLDER_VOCABULARY,
                            [0.0] * args.top_n)
    try:
        existing: Study | None = client.get_study(name)
    except LookupError:
        existing = None
    # The labeled pool's size comes from the evaluator's data: the existing study's, or a
    # stand-in until the evaluator loads.
    pool_size = 0
    if args.labeled_pool:
        pool_size = (existing.spec.pool_size if existing is not None else 0) or max(
            args.examples_per_trial, 1)
    kwargs = _spec_kwargs(args, setup, pool_size)
    # A soft space's vector size may come from the evaluator: compare the rest.
    existing_space = existing.spec.space if existing is not None else None
    if args.soft and isinstance(existing_space, SoftPromptSpace):
        space = SoftPromptSpace(
            args.prompt_length, args.embedding_dim or existing_space.embedding_dim,
            intrinsic_dim=args.intrinsic_dim,
            embedding_std=args.embedding_std or existing_space.embedding_std,
            bound=existing_space.bound)
    return client.create_study(name, space, validate_only=True, **kwargs)


def create_study(client: Client, name: str, args: argparse.Namespace, evaluator: Any = None,
                 setup: dict[str, str] | None = None) -> Study:
    """Creates the study the flags describe (or returns the equal existing one): a hard
    space's vocabulary comes from ``--vocabulary-id``, ``--vocabulary MODEL`` (loaded here)
    or ``evaluator.vocabulary()``; a soft space's width from ``evaluator`` or
    ``--embedding-dim``. ``setup`` (see :func:`evaluator_setup`) is stored as labels."""
    from promptbo.wordlists import read_texts, text_word_scores, word_scores

    space: HardPromptSpace | SoftPromptSpace | PoolSpace
    if args.pool:
        space = PoolSpace(_upload_pool(client, args.pool))
    elif args.soft:
        space = _soft_space(args, evaluator)
    else:
        table = None
        if args.vocabulary:
            from promptbo.evaluators.hf_common import model_vocabulary

            table = model_vocabulary(args.vocabulary, args.vocabulary_size or None)
        elif not args.vocabulary_id:
            table = evaluator.vocabulary() if evaluator is not None else None
            if table is None:
                raise InvalidArgumentError(
                    "a hard-prompt study needs a vocabulary and this evaluator has none: pass "
                    "--vocabulary MODEL (e.g. smollm2; the prompt's tokens come from that "
                    "model's tokenizer), --vocabulary-id ID, or --soft with --embedding-dim")
        vocab_id = args.vocabulary_id if table is None else client.upload_vocabulary(table)
        scores: list[float] = []
        if args.top_n and table is not None:  # check_spec_arguments refuses it with an id
            ranked = (text_word_scores(table.tokens, read_texts(args.top_n_texts))
                      if args.top_n_texts else word_scores(table.tokens, table.token_ids))
            scores = ranked.tolist()
        space = _hard_space(args, vocab_id, scores)
    pool_size = _labeled_pool_size(args, evaluator)
    return client.create_study(name, space, **_spec_kwargs(args, setup, pool_size))


# --- the evaluator setup ------------------------------------------------------------------

def fingerprint(path: str | Path) -> str:
    """``sha256:`` + 16 hex digits over a file's bytes, or a folder's files (relative
    names and bytes, in name order)."""
    root = Path(path).expanduser()
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for f in files:
        if f is not root:
            h.update(str(f.relative_to(root)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def _recorded(key: str, value: Any) -> str:
    text = "" if value is None else str(value)
    if key in _FILE_OPTIONS and text and Path(text).expanduser().exists():
        return fingerprint(text)
    if key == "function" and ".py:" in text:  # the python evaluator's file.py:callable
        file, _, attr = text.rpartition(":")
        if Path(file).expanduser().is_file():
            return f"{fingerprint(file)}:{attr}"
    return text


def evaluator_setup(name: str, options: dict[str, Any]) -> dict[str, str]:
    """The labels that record what scores a study: ``evaluator`` and every option that
    changes scores, defaults filled in, data files by content fingerprint."""
    from promptbo.evaluators.base import check_options, evaluator_options

    check_options(name, options)
    values: dict[str, Any] = {o.name: o.default for o in evaluator_options(name)
                              if not o.required}
    values.update(options)
    setup = {f"{SETUP_PREFIX}evaluator": name}
    for key, value in sorted(values.items()):
        if key not in RUNTIME_OPTIONS:
            setup[f"{SETUP_PREFIX}{key}"] = _recorded(key, value)
    return setup


def setup_differences(labels: dict[str, str] | Any, setup: dict[str, str]) -> list[str]:
    """``"key: A in the study, B here"`` for each recorded setup field that differs;
    empty when they agree or the study recorded no setup."""
    recorded = {k: v for k, v in dict(labels).items() if k.startswith(SETUP_PREFIX)}
    if not recorded:
        return []
    out = []
    for key in sorted(set(recorded) | set(setup)):
        a, b = recorded.get(key, "(not set)"), setup.get(key, "(not set)")
        if a != b:
            out.append(f"{key[len(SETUP_PREFIX):]}: {a!r} in the study, {b!r} here")
    return out
