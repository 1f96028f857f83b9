"""Batched KV-cache generation (reasonlm.engine.KVCacheEngine) vs one-at-a-time HF `model.generate`.

    python eval/bench_generate.py --model out/tiny-cpu/base --adapter out/tiny-cpu/train/adapter \
        --data out/tiny-cpu/data --n 200
    python eval/bench_generate.py --toy --n 16          # smoke test on a random toy model

Both decode greedily from the same prompts (the chat template, as in eval) with the same stop
tokens (end-of-turn and EOS) and the same per-problem token budgets. The script checks that the
greedy outputs are identical, then prints a markdown table row with problems/s for both and the
speedup. Exit status 1 when any output differs (--allow-mismatch to only report it: a batch pads
prompts, so on near-ties in the logits a random toy model can flip an argmax).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch


def toy_model_and_rows(n: int, seed: int = 0):
    """A random 2-layer Llama and a tokenizer trained here on one-digit +/- chains (no download)."""
    from reasonlm.model import build_tiny, train_tokenizer
    from reasonlm.tasks import get_task

    task = get_task("arithmetic", digits=1, ops="+-", min_value=0, max_value=9)
    rng = random.Random(seed)
    rows = []
    for i in range(max(n, 300)):
        ex = task.generate(rng, rng.randint(1, 6))
        rows.append({**ex.to_row(), "id": f"toy-{i}", "meta": "{}"})
    tok = train_tokenizer(["user", "assistant", "system"] + [r["question"] + "\n" + "\n".join(r["steps"]) for r in rows],
                          vocab_size=300)
    model = build_tiny(tok, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position=256, seed=seed)
    model.eval()
    return model, tok, rows[:n]


def load(args):
    from reasonlm.example import read_dataset
    from reasonlm.model import load_for_inference

    if args.toy:
        return toy_model_and_rows(args.n)
    if not args.model:
        sys.exit("error: pass --model (and --data), or --toy")
    model, tok = load_for_inference(args.model, args.adapter)
    if not args.data:
        sys.exit("error: pass --data DATASET_DIR (written by `reasonlm data`)")
    split = read_dataset(args.data)[args.split]
    return model, tok, [dict(r) for r in split.select(range(min(args.n, len(split))))]


def hf_one_at_a_time(model, prompts, budgets, stop_ids, pad):
    outs = []
    for ids, budget in zip(prompts, budgets):
        x = torch.tensor([ids])
        y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=budget, do_sample=False,
                           eos_token_id=sorted(stop_ids), pad_token_id=pad)
        new = y[0, len(ids):].tolist()
        cut = next((i for i, t in enumerate(new) if t in stop_ids), len(new))
        outs.append(new[:cut])
    return outs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="base model directory or Hub id")
    p.add_argument("--adapter", default=None, help="LoRA adapter directory")
    p.add_argument("--data", default=None, help="dataset directory written by `reasonlm data`")
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--n", type=int, default=100, help="problems (default 100)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the batched generator")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = OMP_NUM_THREADS or all cores)")
    p.add_argument("--toy", action="store_true", help="random toy model and generated problems (smoke test)")
    p.add_argument("--allow-mismatch", action="store_true", help="report differing outputs but exit 0")
    args = p.parse_args(argv)
    from reasonlm.answer import encode_prompt, prompt_messages, stop_token_ids
    from reasonlm.engine import KVCacheEngine, SamplingParams
    from reasonlm.example import answer_budget

    torch.set_num_threads(args.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1)
    model, tok, rows = load(args)
    prompts = [encode_prompt(tok, prompt_messages(r["question"])) for r in rows]
    stop_ids = stop_token_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    engine = KVCacheEngine(model, pad, stop_ids)
    budgets = [answer_budget(tok, r["question"], len(p), engine.context_size) for r, p in zip(rows, prompts)]  # as eval

    with torch.no_grad():
        hf_one_at_a_time(model, prompts[:2], budgets[:2], stop_ids, pad)  # warm-up
        t0 = time.perf_counter()
        hf = hf_one_at_a_time(model, prompts, budgets, stop_ids, pad)
        t_hf = time.perf_counter() - t0
        engine = KVCacheEngine(model, pad, stop_ids)
        engine.generate(prompts[:2], SamplingParams(max_new_tokens=budgets[:2], batch_size=args.batch_size))  # warm-up
        t0 = time.perf_counter()
        ours = engine.generate(prompts, SamplingParams(max_new_tokens=budgets, batch_size=args.batch_size))
        t_ours = time.perf_counter() - t0

    differ = [i for i, (a, b) in enumerate(zip(hf, ours)) if a != b]
    name = "toy (random)" if args.toy else args.model + (f" + {args.adapter}" if args.adapter else "")
    n = len(rows)
    print("| model | problems | HF generate, one at a time (problems/s) | batched, KV cache (problems/s) | speedup "
          "| identical greedy outputs |")
    print("|---|---|---|---|---|---|")
    print(f"| {name} | {n} | {n / t_hf:.2f} | {n / t_ours:.2f} | {t_hf / t_ours:.1f}x | "
          f"{'yes' if not differ else f'no ({len(differ)} of {n} differ)'} |")
    if differ:
        i = differ[0]
        print(f"first difference, problem {rows[i].get('id', i)}:\n  HF:      {tok.decode(hf[i])!r}\n"
              f"  batched: {tok.decode(ours[i])!r}", file=sys.stderr)
        if not args.allow_mismatch:
            sys.exit(1)


if __name__ == "__main__":
    main()
