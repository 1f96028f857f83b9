"""RL measurements: the accuracy ladder of a policy, before and after `reasonlm rl`.

    python eval/bench_rl.py ladder RECIPE --adapter out/tiny-cpu/train/adapter --steps 2-12 --n 100
    python eval/bench_rl.py ladder RECIPE --adapter out/tiny-cpu/rl/adapter --steps 7-12 --n 50 --json out.json

Greedy decoding (the engine eval and chat use), `--max-new-tokens` per problem (400 = the
budget the issue's numbers use), fresh problems from the recipe's RL task (rl.task, else the
first generated family) at every length, drawn with a seed RL never uses, scored by the task's
checker through rl.score (the same verdict RL trains on). Prints one markdown row per length
with a 95% Wilson interval.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time

import torch

from reasonlm.answer import encode_prompt, prompt_messages, stop_token_ids
from reasonlm.config import RLConfig, RunPaths, load_recipe
from reasonlm.engine import KVCacheEngine, SamplingParams
from reasonlm.model import load_for_inference, set_threads
from reasonlm.rl import new_problem, problem_family, score
from reasonlm.tasks import get_task

EVAL_SEED = 1_000_003  # problems RL draws come from rl.seed (small integers): never this stream


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p, d = k / n, 1 + z * z / n
    c, h = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def ladder(model, tokenizer, task, lengths, n: int, max_new_tokens: int, seed: int = EVAL_SEED) -> dict:
    """{n_steps: (correct, total)} under greedy decoding."""
    engine = KVCacheEngine(model, tokenizer.pad_token_id or 0, stop_token_ids(tokenizer))
    out = {}
    for steps in lengths:
        rng = random.Random(seed + steps)
        problems = [new_problem(task, rng, steps, f"ladder-{steps}-{i}") for i in range(n)]
        prompts = [encode_prompt(tokenizer, prompt_messages(ex.question)) for ex in problems]
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, batch_size=128))
        verdicts = [score(task, ex, tokenizer.decode(ids), len(ids) >= max_new_tokens) for ex, ids in zip(problems, outs)]
        out[steps] = (sum(v.correct for v in verdicts), n)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("ladder", help="greedy accuracy per n_steps on fresh problems")
    s.add_argument("recipe")
    s.add_argument("--out-dir", default=None, help="run directory (default: the recipe's out_dir)")
    s.add_argument("--adapter", default=None, help="adapter (default <out_dir>/rl/adapter)")
    s.add_argument("--steps", default="2-12", help="lo-hi lengths")
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--max-new-tokens", type=int, default=400)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)
    set_threads(args.threads)
    recipe = load_recipe(args.recipe)
    paths = RunPaths(args.out_dir or recipe.out_dir)
    cfg = recipe.rl or RLConfig()
    name, knobs = problem_family(cfg, recipe)
    task = get_task(name, **knobs)
    adapter = args.adapter or paths.adapter("rl")
    model, tokenizer = load_for_inference(cfg.model or paths.base, adapter)
    lo, hi = (int(x) for x in args.steps.split("-"))
    t0 = time.time()
    with torch.no_grad():
        result = ladder(model, tokenizer, task, range(lo, hi + 1), args.n, args.max_new_tokens)
    print(f"| n_steps | accuracy | 95% interval |  ({adapter}, {time.time() - t0:.0f}s)\n|---|---|---|")
    for steps, (k, n) in result.items():
        a, b = wilson(k, n)
        print(f"| {steps} | {k / n:.1%} | {a:.1%}-{b:.1%} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"adapter": adapter, "n": args.n, "by_steps": {str(s): k / n for s, (k, n) in result.items()}}, f)


if __name__ == "__main__":
    sys.exit(main())
