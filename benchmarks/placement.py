"""Where should the prompt go, and from which words? Scores random prompts on a held-out draw.

For each template (``--templates``, default: the prompt before the input, between the input
and the answer cue, inside the cue) and each candidate list (``--vocab``: the ``--top-n``
whole-word tokens by BPE merge order, ``merges``, or by count in the dataset's training
texts, ``data``; the quality benchmark's two candidate lists) it scores the unprompted model
and ``--prompts`` random prompts of ``--length`` tokens on the ``dev`` split drawn with
``--seed``. The default seed
7 is not one of the quality benchmark's seeds, so its examples are not the ones the
benchmark optimizes or selects on, and the test split is never touched. A placement where
random prompts already beat the unprompted model leaves room for search; one where nearly
all of them hurt makes the search recover the unprompted score at best. A candidate list
whose random prompts spread more (std of the value) leaves a search more to find.

    python -m benchmarks.placement --data-dir ../shared/datasets/sst2
    python -m benchmarks.placement --data-dir ../shared/datasets/sst2 --vocab merges,data \
        --templates $'before input={prompt}\nReview: {text}\nSentiment: {answer}' --k 32
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

PLACEMENTS = {
    "before input": "{prompt}\nReview: {text}\nSentiment: {answer}",
    "after input": "Review: {text}\n{prompt}\nSentiment: {answer}",
    "in the cue": "Review: {text}\nSentiment{prompt}: {answer}",
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--templates", default=None,
                    help="name=template pairs separated by ';;' (default: SST-2 placements)")
    ap.add_argument("--prompts", type=int, default=30)
    ap.add_argument("--length", type=int, default=5)
    ap.add_argument("--top-n", type=int, default=2000)
    ap.add_argument("--vocab", default="merges",
                    help="comma-separated candidate lists: merges (BPE order), data (train texts)")
    ap.add_argument("--k", type=int, default=16, help="examples per class")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args(argv)

    from promptbo.evaluators import create_evaluator
    from promptbo.types import Prompt
    from promptbo.wordlists import read_texts, text_word_scores, word_scores

    templates = PLACEMENTS
    if args.templates:
        templates = dict(pair.split("=", 1) for pair in args.templates.split(";;"))
    lists = [v.strip() for v in args.vocab.split(",") if v.strip()]
    if not set(lists) <= {"merges", "data"}:
        ap.error(f"--vocab: choose from merges, data; got {args.vocab!r}")
    rng = np.random.default_rng(args.seed)
    prompts: dict[str, list[Prompt]] = {}  # per candidate list, the same for every template
    print("| placement | words | unprompted value | unprompted acc | random: mean value | "
          "std | max value | share above unprompted | mean acc | max acc |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, template in templates.items():
        ev = create_evaluator("hf-causal", model=args.model, data=args.data_dir, split="dev",
                              k=args.k, seed=args.seed, template=template)
        (base,) = ev.score([Prompt()])
        for words in lists:
            if words not in prompts:
                vocab = ev.vocabulary()
                if words == "data":
                    texts = read_texts(Path(args.data_dir) / "train.jsonl")
                    scores = text_word_scores(vocab.tokens, texts)
                else:
                    scores = word_scores(vocab.tokens, vocab.token_ids)
                top = np.argsort(-scores, kind="stable")[: args.top_n]
                prompts[words] = []
                for _ in range(args.prompts):
                    rows = rng.choice(top, args.length)
                    tokens = tuple(vocab.tokens[r] for r in rows)
                    prompts[words].append(Prompt(
                        token_ids=tuple(int(vocab.token_ids[r]) for r in rows), tokens=tokens,
                        text="".join(tokens)))
            start = time.perf_counter()
            scored = ev.score(prompts[words])
            values = np.array([s.value for s in scored])
            accs = np.array([s.metrics["accuracy"] for s in scored])
            print(f"| {name} | {words} | {base.value:.4f} | {base.metrics['accuracy']:.3f} | "
                  f"{values.mean():.4f} | {values.std():.4f} | {values.max():.4f} | "
                  f"{(values > base.value).mean():.2f} | {accs.mean():.3f} | {accs.max():.3f} |",
                  flush=True)
            print(f"  ({name}, {words}: {time.perf_counter() - start:.0f} s)", flush=True)
        ev.close()

if __name__ == "__main__":
    main()
