"""reasonlm's generation engine (reasonlm.engine.KVCacheEngine) vs HF `model.generate`, batched and one at a time.

    OMP_NUM_THREADS=1 python eval/bench_generate.py --model out/tiny-cpu/base \
        --adapter out/tiny-cpu/train/adapter --data out/tiny-cpu/data --n 200 --repeat 3
    OMP_NUM_THREADS=1 python eval/bench_generate.py --model out/tiny-cpu/base \
        --adapter out/tiny-cpu/train/adapter --rl recipes/tiny-cpu.yaml --batch-size 128
    python eval/bench_generate.py --toy --n 16          # smoke test on a random toy model

Every method decodes greedily from the same prompts (the chat template, as in eval) with the same
stop tokens (end-of-turn and EOS) and the same per-problem token budgets:
  - HF generate, batched: `model.generate` on prompts sorted by length, in left-padded batches of
    --batch-size (the fair anchor: a user who cares about speed already batches);
  - HF generate, one at a time (how lm-evaluation-harness's generate_until runs);
  - engine, general path: the engine with the model's own forward per token (fast=False);
  - engine: the default (reasonlm.llama_decoder's decode step for Llama-family models);
  - engine, folded: LoRA folded into the weights, q/k/v and gate/up fused (RL's sampler; equal to
    the default up to float rounding, so its outputs may differ on near-ties).
With --rl RECIPE the workload is RL's first round instead of eval's: rl.prompts_per_round problems
drawn by RL's own problem pool (rl.n_steps steps, rl.seed), each repeated rl.num_generations times,
every row with the budget rl.max_completion_length, sampled at rl.temperature.
Then both batched methods sample at temperature 0.6 (--rl: rl.temperature; HF: do_sample; the
engine: per-row seeds): speed only, since samples differ by nature.
The script prints a markdown table: problems/s by wall clock and per CPU-second of this process
(steadier on a shared machine), the speedup over batched generate, and whether every output is
identical to batched generate's. Exit status 1 when any output differs (--allow-mismatch to only
report it: on near-ties in the logits a random toy model can flip an argmax).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
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


def rl_rows(recipe_path: str):
    """RL's first round of the recipe: rl.prompts_per_round problems drawn by RL's own ProblemPool,
    each rl.num_generations times, as rows; and the recipe's rl section."""
    from reasonlm.config import ConfigError, load_recipe
    from reasonlm.rl import ProblemPool, RLError, imported_problems, problem_family
    from reasonlm.tasks import get_task

    try:
        recipe = load_recipe(recipe_path)
        cfg = recipe.rl
        if cfg is None:
            sys.exit(f"error: {recipe_path} has no rl: section")
        name, knobs = problem_family(cfg, recipe)
        task = get_task(name, **knobs)
        pool = ProblemPool(task, cfg, records=imported_problems(task, cfg))
    except (ConfigError, RLError, OSError) as e:
        sys.exit(f"error: {e}")
    return [{"question": ex.question, "id": f"{ex.id}-{g}"}
            for ex, _ in pool.draw(cfg.prompts_per_round) for g in range(cfg.num_generations)], cfg


def load(args):
    from reasonlm.example import read_dataset
    from reasonlm.model import load_adapter

    if args.toy:
        return (*toy_model_and_rows(args.n), None)
    if not args.model:
        sys.exit("error: pass --model (and --data or --rl), or --toy")
    model, tok = load_adapter(args.model, args.adapter)
    if args.rl:
        return (model, tok, *rl_rows(args.rl))
    if not args.data:
        sys.exit("error: pass --data DATASET_DIR (written by `reasonlm data`)")
    split = read_dataset(args.data)[args.split]
    return model, tok, [dict(r) for r in split.select(range(min(args.n, len(split))))], None


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


def hf_batched(model, prompts, budgets, stop_ids, pad, batch_size, temperature: float = 0.0):
    """`model.generate` the way a user who cares about speed calls it: prompts sorted by length,
    left-padded batches, each batch run to its largest budget, every row then cut at its own budget
    and first stop token (the same rows and budgets the engine gets)."""
    outs: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        x = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, i in enumerate(idx):
            x[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        y = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max(budgets[i] for i in idx),
                           do_sample=temperature > 0, temperature=temperature or None, top_k=None, top_p=None,
                           eos_token_id=sorted(stop_ids), pad_token_id=pad)
        for r, i in enumerate(idx):
            new = y[r, width:width + budgets[i]].tolist()
            outs[i] = new[:next((k for k, t in enumerate(new) if t in stop_ids), len(new))]
    return outs


def timed(fn, repeat: int):
    """(output, median wall seconds, median CPU seconds of this process) over `repeat` runs. CPU
    time is the steadier number on a shared machine: other processes' load stretches wall time."""
    walls, cpus = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return out, statistics.median(walls), statistics.median(cpus)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="base model directory or Hub id")
    p.add_argument("--adapter", default=None, help="LoRA adapter directory")
    p.add_argument("--data", default=None, help="dataset directory written by `reasonlm data`")
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--n", type=int, default=100, help="problems (default 100)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of batched generate and the engine")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per method; the median is reported")
    p.add_argument("--skip-one-at-a-time", action="store_true", help="leave out one-at-a-time generate (slow)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = OMP_NUM_THREADS or all cores)")
    p.add_argument("--toy", action="store_true", help="random toy model and generated problems (smoke test)")
    p.add_argument("--rl", default=None, metavar="RECIPE", help="one RL round's workload of this recipe (instead of --data)")
    p.add_argument("--allow-mismatch", action="store_true", help="report differing outputs but exit 0")
    args = p.parse_args(argv)
    from reasonlm.answer import encode_prompt, prompt_messages, stop_token_ids
    from reasonlm.engine import SamplingParams, engine_for
    from reasonlm.example import answer_budget

    torch.set_num_threads(args.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1)
    model, tok, rows, rl = load(args)  # rl: the recipe's rl section with --rl, else None
    prompts = [encode_prompt(tok, prompt_messages(r["question"])) for r in rows]
    stop_ids = stop_token_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    temperature, budgets = 0.6, [answer_budget(tok, r["question"], len(p), engine_for(model, tok).context_size)
                                 for r, p in zip(rows, prompts)]  # as eval
    if rl is not None:  # as RL samples
        temperature, budgets = rl.temperature, [rl.max_completion_length] * len(prompts)
    methods = {  # name -> run all prompts; the first is the reference every other one must equal
        "HF generate, batched": lambda ps, bs: hf_batched(model, ps, bs, stop_ids, pad, args.batch_size),
        "HF generate, one at a time": lambda ps, bs: hf_one_at_a_time(model, ps, bs, stop_ids, pad),
        "engine, general path": lambda ps, bs: engine_for(model, tok, fast=False).generate(
            ps, SamplingParams(max_new_tokens=bs, batch_size=args.batch_size)),
        "engine": lambda ps, bs: engine_for(model, tok).generate(
            ps, SamplingParams(max_new_tokens=bs, batch_size=args.batch_size)),
        "engine, folded (RL's sampler)": lambda ps, bs: engine_for(model, tok, fold_lora=True).generate(
            ps, SamplingParams(max_new_tokens=bs, batch_size=args.batch_size)),
    }
    sampling = {  # outputs differ by nature, so only the speed is compared
        "HF generate, batched, sampling": lambda ps, bs: hf_batched(model, ps, bs, stop_ids, pad, args.batch_size,
                                                                    temperature),
        "engine, folded, sampling (per-row seeds)": lambda ps, bs: engine_for(
            model, tok, fold_lora=True).generate(ps, SamplingParams(
                max_new_tokens=bs, batch_size=args.batch_size, temperature=temperature, seeds=list(range(len(ps))))),
    }
    if args.skip_one_at_a_time:
        del methods["HF generate, one at a time"]
    results = {}
    with torch.no_grad():
        for name, run in methods.items():
            run(prompts[:2], budgets[:2])  # warm-up
            results[name] = timed(lambda: run(prompts, budgets), args.repeat)
        sampled = {}
        for name, run in sampling.items():
            run(prompts[:2], budgets[:2])
            sampled[name] = timed(lambda: run(prompts, budgets), args.repeat)

    name = "toy (random)" if args.toy else args.model + (f" + {args.adapter}" if args.adapter else "")
    n, (reference, _, ref_cpu) = len(rows), results["HF generate, batched"]
    workload = f"one RL round of {args.rl}" if args.rl else "eval"
    print(f"{name}: {workload}, {n} problems, batch {args.batch_size}, greedy, {torch.get_num_threads()} thread(s), "
          f"median of {args.repeat}")
    print("| method | problems/s (wall) | problems per CPU-second | vs batched generate (CPU) "
          "| identical greedy outputs |")
    print("|---|---|---|---|---|")
    mismatch = False
    for method, (out, wall, cpu) in results.items():
        differ = [i for i, (a, b) in enumerate(zip(reference, out)) if a != b]
        mismatch |= bool(differ)
        print(f"| {method} | {n / wall:.2f} | {n / cpu:.2f} | {ref_cpu / cpu:.2f}x | "
              f"{'yes' if not differ else f'no ({len(differ)} of {n} differ)'} |")
        if differ:
            i = differ[0]
            print(f"first difference, problem {rows[i].get('id', i)}:\n  batched generate: {tok.decode(reference[i])!r}\n"
                  f"  {method}: {tok.decode(out[i])!r}", file=sys.stderr)
    (_, _, hf_cpu), (_, _, ours_cpu) = sampled.values()
    for method, (out, wall, cpu) in sampled.items():
        tokens = sum(map(len, out))
        print(f"| {method} | {n / wall:.2f} | {n / cpu:.2f} | {hf_cpu / cpu:.2f}x (vs batched sampling) | "
              f"sampled ({tokens} tokens) |")
    if mismatch and not args.allow_mismatch:
        sys.exit(1)


if __name__ == "__main__":
    main()
