"""Throughput of the hf-causal evaluator against a bare transformers forward pass.

Two measurements on the demo reviews (or ``--data``) with the bundled SmolLM2-135M
(or ``--model``):

1. overhead: ``score()`` with the KV cache off against the same (prompt, review) sequences
   tokenized by the tokenizer and run through ``model(...)`` directly, left-padded in batches
   of the same size, reading the label words' log-probabilities at the last position.
   Reported as sentences (prompt x review pairs) per second and their ratio.
2. KV cache: the template here puts the prompt after the review, so the review's keys and
   values are computed once and reused. Reported as sentences/s with the cache off and on
   (steady state: the caches exist after the first call, as in an optimization loop), and
   the first call that builds them.

Usage::

    python -m benchmarks.evaluator_throughput --examples 16 --prompts 4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from promptbo.evaluators import create_evaluator
from promptbo.types import Prompt

PROMPTS = [
    " Is this review positive or negative?",
    " Decide whether the reviewer liked the film.",
    " Classify the sentiment of the text above.",
    " Does the writer recommend it? Answer with one word.",
    " What is the overall opinion expressed here?",
    " Read the review and label its sentiment.",
    " Tell me the feeling of this short movie review.",
    " Is the critic happy or unhappy with the film?",
]


def timed(fns: dict, repeats: int) -> dict:
    """Median seconds of each ``fn()`` over ``repeats`` rounds; the functions take turns in
    every round, so a load change on a shared machine hits all of them alike."""
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bare_forward(ev, texts: list[str], label_ids: list[int], batch_size: int) -> list:
    """Label-word log-probs of ``texts`` with the tokenizer and one model call per batch."""
    tok, model = ev.tokenizer, ev.model
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tok(texts[start:start + batch_size], return_tensors="pt", padding=True).to(
                ev.device)
            logits = model(**batch, logits_to_keep=1).logits[:, -1].float()
            out.append(torch.log_softmax(logits, -1)[:, label_ids].cpu())
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default="demo",
                    help="demo, or a dataset with single-token label words, e.g. "
                         "../shared/datasets/sst2")
    ap.add_argument("--examples", type=int, default=16, help="reviews per prompt (even)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per score() call")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)

    common = {"model": args.model, "data": args.data, "split": "test", "k": 8,
              "max_examples": args.examples, "batch_size": args.batch_size,
              "template": "Review: {text}\n{prompt}\nSentiment: {answer}"}
    ev = create_evaluator("hf-causal", kv_cache="off", **common)
    tok = ev.tokenizer
    prompts = [Prompt(token_ids=tuple(tok(t, add_special_tokens=False)["input_ids"]), text=t)
               for t in PROMPTS[:args.prompts]]
    n = len(prompts) * len(ev.task.examples)
    template = ev.task.template
    texts = [template.render_text(ex, p.text) for p in prompts for ex in ev.task.examples]
    label_ids = [ids[0] for ids in ev.encoded[0].label_ids]

    cached = create_evaluator("hf-causal", kv_cache="on", **common)
    ev.score(prompts)  # warm up
    bare_forward(ev, texts, label_ids, args.batch_size)
    t0 = time.perf_counter()
    cached.score(prompts)  # builds the prefix caches
    t_first = time.perf_counter() - t0
    t = timed({"bare": lambda: bare_forward(ev, texts, label_ids, args.batch_size),
               "eval": lambda: ev.score(prompts), "cached": lambda: cached.score(prompts)},
              args.repeats)
    t_bare, t_eval, t_cached = t["bare"], t["eval"], t["cached"]

    tokens = [len(e.before) for e in ev.encoded]
    results = {
        "model": args.model, "data": args.data, "mean_input_tokens": sum(tokens) / len(tokens),
        "device": str(ev.device), "dtype": str(ev.dtype).split(".")[-1],
        "threads": torch.get_num_threads(), "sentences_per_call": n,
        "batch_size": args.batch_size,
        "bare_forward_sps": n / t_bare, "hf_causal_sps": n / t_eval,
        "ratio": t_bare / t_eval,
        "kv_off_sps": n / t_eval, "kv_on_sps": n / t_cached, "kv_first_call_sps": n / t_first,
        "kv_speedup": t_eval / t_cached,
    }
    print(f"| {args.data}: {n} sentences ({len(prompts)} prompts x {len(ev.task.examples)} inputs "
          f"of {results['mean_input_tokens']:.0f} tokens before the prompt), "
          f"{results['device']} {results['dtype']}, {results['threads']} threads, "
          f"batch {args.batch_size} | sentences/s |")
    print("|---|---:|")
    print(f"| bare transformers forward | {results['bare_forward_sps']:.1f} |")
    print(f"| hf-causal, kv_cache=off | {results['hf_causal_sps']:.1f} "
          f"(ratio {results['ratio']:.2f}x) |")
    print(f"| hf-causal, kv_cache=on, first call (builds caches) | "
          f"{results['kv_first_call_sps']:.1f} |")
    print(f"| hf-causal, kv_cache=on, later calls | {results['kv_on_sps']:.1f} "
          f"(speed-up {results['kv_speedup']:.2f}x) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
