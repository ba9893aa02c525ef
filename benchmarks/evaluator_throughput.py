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
3. ``--prompt-first``: instead of 1-2, the default template (the prompt before the review)
   with pool candidates as text prompts (instruction, label phrase and one demonstration,
   as in :mod:`benchmarks.pool_quality`; ``--demos`` for longer ones): sentences/s with
   ``kv_cache=off`` (every row runs all its tokens) and ``auto`` (each prompt's shared
   prefix runs once per call), and the bare forward of the same texts. ``--split
   objective`` scores the 32 objective reviews of seed 0 instead of the first test ones.

Usage::

    python -m benchmarks.evaluator_throughput --examples 16 --prompts 4 --repeats 3
    python -m benchmarks.evaluator_throughput --prompt-first --examples 32 --prompts 1
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
    ap.add_argument("--prompt-first", action="store_true",
                    help="the default template and ~60-token pool candidates as prompts; "
                         "kv_cache off against auto (the shared prompt prefix)")
    ap.add_argument("--demos", type=int, default=1,
                    help="with --prompt-first: demonstrations per candidate prompt")
    ap.add_argument("--split", default="test",
                    help="with --prompt-first: test (its first --examples), or objective "
                         "(--examples/2 per class, seed 0: a pool benchmark evaluation)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.prompt_first:
        return prompt_first(args)

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


def pool_prompts(n: int, data: str, demos_per_prompt: int = 1) -> list[Prompt]:
    """``n`` pool candidates (instruction, label phrase, ``demos_per_prompt``
    demonstrations from the demo reviews or ``data``'s training pool), spread over the
    instructions, as text prompts."""
    from benchmarks.pool_synthetic import INSTRUCTIONS, LABEL_PHRASES
    from promptbo.evaluators.data import demo_path, read_examples
    from promptbo.evaluators.pools import combine, training_examples

    if data == "demo":
        demos = [(ex.text, "positive" if int(ex.label) == 1 else "negative")
                 for ex in read_examples(demo_path())]
    else:
        demos = training_examples(data)[:200]
    texts = combine(INSTRUCTIONS, label_phrases=LABEL_PHRASES[1:], demonstrations=demos,
                    k=demos_per_prompt, seed=0)
    step = max(len(texts) // n, 1)
    return [Prompt(text=t) for t in texts[::step][:n]]


def prompt_first(args) -> dict:
    common = {"model": args.model, "data": args.data, "split": args.split,
              "k": args.examples // 2, "batch_size": args.batch_size}
    if args.split == "test":
        common["max_examples"] = args.examples
    plain = create_evaluator("hf-causal", kv_cache="off", **common)
    shared = create_evaluator("hf-causal", kv_cache="auto", **common)
    prompts = pool_prompts(args.prompts, args.data, args.demos)
    n = len(prompts) * len(plain.task.examples)
    template = plain.task.template
    texts = [template.render_text(ex, p.text) for p in prompts for ex in plain.task.examples]
    label_ids = [ids[0] for ids in plain.encoded[0].label_ids]
    prompt_tokens = [len(plain._prompt_part(p)) for p in prompts]
    input_tokens = [len(e.after) for e in plain.encoded]
    plain.score(prompts)  # warm up
    shared.score(prompts)
    bare_forward(plain, texts, label_ids, args.batch_size)
    t = timed({"bare": lambda: bare_forward(plain, texts, label_ids, args.batch_size),
               "off": lambda: plain.score(prompts), "auto": lambda: shared.score(prompts)},
              args.repeats)
    values = [s.value for s in plain.score(prompts)], [s.value for s in shared.score(prompts)]
    results = {
        "model": args.model, "data": args.data, "split": args.split,
        "template": template.source,
        "mean_prompt_tokens": sum(prompt_tokens) / len(prompt_tokens),
        "mean_tokens_after_prompt": sum(input_tokens) / len(input_tokens),
        "device": str(plain.device), "dtype": str(plain.dtype).split(".")[-1],
        "threads": torch.get_num_threads(), "sentences_per_call": n,
        "batch_size": args.batch_size, "repeats": args.repeats, "demos": args.demos,
        "bare_forward_sps": n / t["bare"], "kv_off_sps": n / t["off"],
        "shared_prefix_sps": n / t["auto"], "speedup": t["off"] / t["auto"],
        "seconds_per_call_off": t["off"], "seconds_per_call_auto": t["auto"],
        "max_value_difference": max(abs(a - b) for a, b in zip(*values, strict=True)),
    }
    print(f"| {args.data}: {n} sentences ({len(prompts)} prompts of "
          f"{results['mean_prompt_tokens']:.0f} tokens x {len(plain.task.examples)} inputs, "
          f"{results['mean_tokens_after_prompt']:.0f} tokens after the prompt), prompt first, "
          f"{results['device']} {results['dtype']}, {results['threads']} threads, "
          f"batch {args.batch_size} | sentences/s | s per call |")
    print("|---|---:|---:|")
    print(f"| bare transformers forward | {results['bare_forward_sps']:.1f} | "
          f"{n / results['bare_forward_sps']:.2f} |")
    print(f"| hf-causal, kv_cache=off | {results['kv_off_sps']:.1f} | {t['off']:.2f} |")
    print(f"| hf-causal, kv_cache=auto (shared prompt prefix) | "
          f"{results['shared_prefix_sps']:.1f} (speed-up {results['speedup']:.2f}x) | "
          f"{t['auto']:.2f} |")
    print(f"max |value(off) - value(auto)| = {results['max_value_difference']:.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
