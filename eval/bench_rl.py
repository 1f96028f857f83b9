"""RL measurements: the accuracy ladder of a policy, and reasonlm's RL step against TRL's GRPOTrainer.

    python eval/bench_rl.py ladder RECIPE --adapter out/tiny-cpu/train/adapter --steps 2-12 --n 100
    python eval/bench_rl.py ladder RECIPE --adapter out/tiny-cpu/rl/adapter --steps 7-12 --n 50 --json out.json
    python eval/bench_rl.py trl RECIPE --rounds 3     # needs `pip install trl` (not a dependency)

    python eval/bench_rl.py compare --run "SFT=out/sft" --run "GRPO process=out/p0,out/p1" --plot rl.png
    python eval/bench_rl.py pool out/seed0 out/seed1 out/seed2      # pipeline runs of several seeds, pooled
    python eval/bench_rl.py ladders --run "SFT=out/tiny-cpu-long/eval-sft" \
        --run "long recipe=out/tiny-cpu-long/eval,out/tiny-cpu-long-s1/eval" --trained 6 --plot ladder.png
    python eval/bench_rl.py breaks out/tiny-cpu/eval-ladder-rl --steps 9-12   # where wrong answers break

`ladders` reads eval folders (`reasonlm eval` on a recipe with a length ladder, e.g.
recipes/tiny-cpu-long.yaml) and prints each run's accuracy per length, the folders of one label
(its seeds) pooled, with 95% Wilson intervals; with `--plot`, the same as one picture.

`breaks` reads the same folders and counts, per length, the wrong answers that ended before a
line per step, those cut off by the budget, and the step the checker first rejected in each.

`compare` reads the `ladder.json` of each run directory (written by `ladder --json DIR/ladder.json`)
and prints one markdown row per method: accuracy at 2-6, 7-8, 9-10 and 11-12 steps with the
seeds' problems pooled and a 95% Wilson interval; with `--plot`, the probe accuracy
(rl.probe_every) of each run's metrics.jsonl against samples drawn, one line per seed.

`trl` runs `--rounds` steps of reasonlm's GRPO (rl.fit) and then as many steps of TRL's
GRPOTrainer from the same base and adapter, on the same problems in the same order (reasonlm's
difficulty pool off: rl.retries=0), with the same group size, prompts per step,
completion budget, temperature, learning rate, loss type (dapo), outcome reward (rl.score) and
no vLLM, and prints samples/s and the mean reward of each, and where reasonlm's time goes.

Greedy decoding (the engine eval and chat use), `--max-new-tokens` per problem (400 = the
budget the issue's numbers use), fresh problems from the recipe's RL task (rl.task, else the
first generated family) at every length, drawn with a seed RL never uses, scored by the task's
checker through rl.score (the same verdict RL trains on). Prints one markdown row per length
with a 95% Wilson interval.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter

import torch

from reasonlm.answer import encode_prompt, prompt_messages
from reasonlm.config import RLConfig, RunPaths, base_model, load_recipe
from reasonlm.engine import SamplingParams, engine_for
from reasonlm.model import load_adapter, set_threads
from reasonlm.plots import plot_accuracy_by_steps
from reasonlm.credit import score
from reasonlm.rl import problem_family
from reasonlm.sources import ladder_problems
from reasonlm.stats import wilson_interval
from reasonlm.tasks import get_task

EVAL_SEED = 1_000_003  # problems RL draws come from rl.seed (small integers): never this stream


def wilson(k: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of k/n (stats.wilson_interval); (0, 0) for no problems."""
    return wilson_interval(k, n)[1:] if n else (0.0, 0.0)


def ladder(model, tokenizer, task, lengths, n: int, max_new_tokens: int, seed: int = EVAL_SEED) -> dict:
    """{n_steps: (correct, total)} under greedy decoding."""
    engine = engine_for(model, tokenizer)
    out = {}
    for steps in lengths:
        problems = ladder_problems(task, [steps], n, seed, "ladder")
        prompts = [encode_prompt(tokenizer, prompt_messages(ex.question)) for ex in problems]
        outs = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, batch_size=128))
        verdicts = [score(task, ex, tokenizer.decode(ids), len(ids) >= max_new_tokens) for ex, ids in zip(problems, outs)]
        out[steps] = (sum(v.correct for v in verdicts), n)
    return out


def bench_trl(recipe, paths, task, cfg: RLConfig, rounds: int, out: str, held_out: int = 0) -> dict:
    """samples/s and mean reward of reasonlm's GRPO and TRL's GRPOTrainer over `rounds` steps; with
    `held_out`, also each trained policy's greedy accuracy on that many fresh problems of every
    rl.n_steps length (the same problems for both)."""
    from accelerate import Accelerator  # heavy, as in the stage
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer  # optional: only this benchmark needs TRL

    from reasonlm.example import Example
    from reasonlm.rl import fit
    from reasonlm.rl.pool import ProblemPool

    # retries=0: the pool serves fresh problems only, in the order TRL gets them (its difficulty
    # pool would serve unsolved ones again, a harder round 2 than TRL's); replay_sft=0: replaying
    # SFT's gold chains belongs to expert iteration (a recipe's replay_sft does not carry over to GRPO)
    cfg = dataclasses.replace(cfg, algorithm="grpo", reward="outcome", loss_type="dapo", rounds=rounds, save_every=0,
                              dynamic_sampling=False, beta=0.0, num_iterations=1, resume="never", retries=0,
                              replay_sft=0)
    base, adapter = base_model(dataclasses.replace(recipe, out_dir=paths.out_dir), cfg.model), cfg.adapter or paths.adapter("train")
    results = {}
    model, tokenizer = load_adapter(base, adapter, trainable=True, device=None)
    accelerator = Accelerator(cpu=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.99))
    model, opt = accelerator.prepare(model, opt)
    reference = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    os.makedirs(os.path.join(out, "reasonlm"), exist_ok=True)
    t0 = time.time()
    stats = fit(model, tokenizer, ProblemPool(task, cfg), reference, cfg, os.path.join(out, "reasonlm"), accelerator, opt)
    rows = [json.loads(line) for line in open(os.path.join(out, "reasonlm", "metrics.jsonl"))]
    results["reasonlm"] = {"seconds": round(time.time() - t0, 1), "samples": stats["samples"],
                           "samples_per_s": round(stats["samples"] / (time.time() - t0), 2),
                           "reward_mean": round(sum(r["reward_mean"] for r in rows) / len(rows), 4),
                           "sample_s": round(sum(r["sample_s"] for r in rows), 1),
                           "update_s": round(sum(r["update_s"] for r in rows), 1)}
    lengths = range(cfg.n_steps[0], cfg.n_steps[1] + 1)
    if held_out:
        results["reasonlm"]["held_out"] = ladder(accelerator.unwrap_model(model).eval(), tokenizer, task, lengths,
                                                 held_out, cfg.max_completion_length)

    pool = ProblemPool(task, cfg)  # the same problems, in the same order (retries=0)
    problems = [ex for ex, _ in pool.draw(cfg.prompts_per_round * rounds)]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": ex.question}], "row": json.dumps(ex.to_row())}
                                 for ex in problems])

    def reward(prompts, completions, row, **_):
        return [score(task, Example.from_row(json.loads(r)), c[0]["content"] if isinstance(c, list) else c, False).reward
                for c, r in zip(completions, row)]

    model, tokenizer = load_adapter(base, adapter, trainable=True, device=None)
    args = GRPOConfig(output_dir=os.path.join(out, "trl"), per_device_train_batch_size=cfg.prompts_per_round * cfg.num_generations,
                      steps_per_generation=1, num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length,
                      temperature=cfg.temperature, top_p=cfg.top_p, learning_rate=cfg.lr, lr_scheduler_type="constant",
                      loss_type="dapo", scale_rewards="group" if cfg.scale_rewards else "none", beta=0.0, max_steps=rounds,
                      use_cpu=True, logging_steps=1, report_to=[], save_strategy="no", shuffle_dataset=False, seed=cfg.seed)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=dataset, processing_class=tokenizer)
    t0 = time.time()
    trainer.train()
    logged = [h for h in trainer.state.log_history if "reward" in h]
    samples = rounds * cfg.prompts_per_round * cfg.num_generations
    results["trl"] = {"seconds": round(time.time() - t0, 1), "samples": samples,
                      "samples_per_s": round(samples / (time.time() - t0), 2),
                      "reward_mean": round(sum(h["reward"] for h in logged) / max(1, len(logged)), 4)}
    if held_out:
        results["trl"]["held_out"] = ladder(trainer.model.eval(), tokenizer, task, lengths, held_out,
                                            cfg.max_completion_length)
    return results


BUCKETS = [(2, 6), (7, 8), (9, 10), (11, 12)]


def cell(k: int, n: int) -> str:
    """k of n as a table cell: the rate and its 95% Wilson interval ("-" for none)."""
    a, b = wilson(k, n)
    return f"{k / n:.1%} ({a:.0%}-{b:.0%})" if n else "-"


def compare(runs: list[str], plot: str | None) -> None:
    """The equal-budget table of methods (each "label=dir[,dir...]", one dir per seed) and the plot."""
    methods = []
    for spec in runs:
        label, _, dirs = spec.partition("=")
        methods.append((label, [d for d in dirs.split(",") if d]))
    print("| method | seeds | " + " | ".join(f"{lo}-{hi} steps" for lo, hi in BUCKETS) + " |")
    print("|---|---|" + "---|" * len(BUCKETS))
    for label, dirs in methods:
        ladders = [json.load(open(os.path.join(d, "ladder.json"))) for d in dirs]
        cells = []
        for lo, hi in BUCKETS:
            k = n = 0
            for lad in ladders:
                for steps in range(lo, hi + 1):
                    if str(steps) in lad["by_steps"]:
                        k += round(lad["by_steps"][str(steps)] * lad["n"])
                        n += lad["n"]
            cells.append(cell(k, n))
        print(f"| {label} | {len(dirs)} | " + " | ".join(cells) + " |")
    if not plot:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for color, (label, dirs) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], methods):
        labelled = False
        for d in dirs:
            path = os.path.join(d, "rl", "metrics.jsonl")
            rows = [json.loads(line) for line in open(path)] if os.path.isfile(path) else []
            points = [(r["samples_total"], sum(r["probe"].values()) / len(r["probe"])) for r in rows if r.get("probe")]
            if points:  # one line per seed; the method's label once
                ax.plot(*zip(*points), color=color, marker="o", ms=3, label=None if labelled else label)
                labelled = True
    ax.set_xlabel("samples drawn")
    ax.set_ylabel("greedy accuracy, probe set (rl.probe_steps)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    print(f"wrote {plot}")


def rows_by_steps(folders: list[str]) -> dict[int, list[dict]]:
    """The folders' samples.jsonl rows (eval outputs: one answer each), per n_steps."""
    rows: dict[int, list[dict]] = {}
    for folder in folders:
        with open(os.path.join(folder, "samples.jsonl")) as f:
            for row in (json.loads(line) for line in f if line.strip()):
                rows.setdefault(row["n_steps"], []).append(row)
    return rows


def hits_by_steps(folders: list[str]) -> dict[int, list[bool]]:
    """Whether each answer in the folders' samples.jsonl was right, per n_steps."""
    return {steps: [bool(r["correct"]) for r in rows] for steps, rows in rows_by_steps(folders).items()}


def breaks(folders: list[str], lengths: tuple[int, int] | None) -> None:
    """Where the wrong answers of eval folders (seeds pooled) break, per length: how many ended
    before writing a line per step, and the first step the checker rejected ("none": every line
    written was right and the answer came too early or was cut off)."""
    print("| steps | problems | wrong | fewer lines than steps | cut off | first wrong step: answers |")
    print("|---|---|---|---|---|---|")
    for steps, rows in sorted(rows_by_steps(folders).items()):
        if lengths and not lengths[0] <= steps <= lengths[1]:
            continue
        wrong = [r for r in rows if not r["correct"]]
        at = Counter(r.get("first_bad_step") for r in wrong)
        hist = ", ".join(f"{k}: {at[k]}" for k in sorted(k for k in at if k is not None))
        hist = ", ".join(x for x in (f"none: {at[None]}" if at[None] else "", hist) if x)
        print(f"| {steps} | {len(rows)} | {len(wrong)} | {sum(r['steps_total'] < steps for r in wrong)} | "
              f"{sum(bool(r.get('truncated')) for r in wrong)} | {hist} |")


def pool(run_dirs: list[str], buckets: list[tuple[int, int]]) -> None:
    """The pipeline's own scores of several run directories (one per seed), pooled per bucket of
    lengths with a 95% Wilson interval: SFT+RL on the held-out split (eval-rl) and on the ladder
    (eval-ladder-rl), counted from each eval's samples.jsonl."""
    print("| eval | runs | " + " | ".join(f"{lo}-{hi} steps" for lo, hi in buckets) + " |")
    print("|---|---|" + "---|" * len(buckets))
    for label, folder in (("held-out split", "eval-rl"), ("ladder", "eval-ladder-rl")):
        by_steps = hits_by_steps([os.path.join(d, folder) for d in run_dirs])
        cells = []
        for lo, hi in buckets:
            hits = [h for steps, hs in by_steps.items() if lo <= steps <= hi for h in hs]
            cells.append(cell(sum(hits), len(hits)))
        print(f"| {label} | {len(run_dirs)} | " + " | ".join(cells) + " |")


def ladders(runs: list[str], trained: int | None, plot: str | None) -> None:
    """Accuracy per length of eval folders ("label=dir[,dir...]", a folder's samples.jsonl; the
    folders of a label pooled), as a markdown table and, with `plot`, one line per label."""
    series = {}
    for spec in runs:
        label, _, dirs = spec.partition("=")
        hits = hits_by_steps([d for d in dirs.split(",") if d])
        series[label] = {steps: wilson_interval(sum(h), len(h)) for steps, h in sorted(hits.items())}
    lengths = sorted({steps for points in series.values() for steps in points})
    print("| run | " + " | ".join(str(steps) for steps in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for label, points in series.items():
        print(f"| {label} | " + " | ".join(f"{points[s][0]:.0%}" if s in points else "" for s in lengths) + " |")
    if plot:
        print(f"wrote {plot_accuracy_by_steps(series, plot, 'accuracy by number of steps (fresh problems, greedy)', trained)}")


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
    s = sub.add_parser("compare", help="the equal-budget table of ladder.json runs, and the accuracy-vs-samples plot")
    s.add_argument("--run", action="append", required=True, help='"label=dir[,dir...]" (one directory per seed)')
    s.add_argument("--plot", default=None, help="write the probe accuracy against samples here (png)")
    s = sub.add_parser("pool", help="SFT+RL accuracy of several pipeline runs (seeds), pooled per bucket of lengths")
    s.add_argument("run_dirs", nargs="+", help="pipeline run directories (out_dir of each seed)")
    s.add_argument("--buckets", default="2-6,7-8,9-10,11-12", help="lo-hi lengths, comma-separated")
    s = sub.add_parser("ladders", help="accuracy per length of eval folders (seeds pooled), a table and a picture")
    s.add_argument("--run", action="append", required=True, help='"label=eval_dir[,eval_dir...]" (one folder per seed)')
    s.add_argument("--trained", type=int, default=None, help="the longest trained chain (a mark after it)")
    s.add_argument("--plot", default=None, help="write the picture here (png)")
    s = sub.add_parser("breaks", help="where the wrong answers of eval folders break, per length")
    s.add_argument("folders", nargs="+", help="eval folders (their samples.jsonl), pooled")
    s.add_argument("--steps", default=None, help="lo-hi lengths (default: all)")
    s = sub.add_parser("trl", help="reasonlm's GRPO step vs TRL's GRPOTrainer: samples/s and reward")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*", help="rl.* overrides, e.g. rl.prompts_per_round=8")
    s.add_argument("--out-dir", default=None, help="run directory (default: the recipe's out_dir)")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--out", default="/tmp/rl-bench-trl", help="scratch directory of both runs")
    s.add_argument("--held-out", type=int, default=0,
                   help="then score both policies greedily on this many fresh problems of every rl.n_steps length")
    args = p.parse_args(argv)
    if args.command == "compare":
        return compare(args.run, args.plot)
    if args.command == "ladders":
        return ladders(args.run, args.trained, args.plot)
    if args.command == "breaks":
        return breaks(args.folders, tuple(int(x) for x in args.steps.split("-")) if args.steps else None)
    if args.command == "pool":
        return pool(args.run_dirs, [tuple(int(x) for x in b.split("-")) for b in args.buckets.split(",")])
    set_threads(args.threads)
    recipe = load_recipe(args.recipe, getattr(args, "overrides", []))
    paths = RunPaths(args.out_dir or recipe.out_dir)
    cfg = recipe.rl or RLConfig()
    name, knobs = problem_family(cfg, recipe)
    task = get_task(name, **knobs)
    if args.command == "trl":
        result = bench_trl(recipe, paths, task, cfg, args.rounds, args.out, args.held_out)
        print("| trainer | samples | seconds | samples/s | mean reward | held-out accuracy (95% interval) |\n"
              "|---|---|---|---|---|---|")
        for who, r in result.items():
            k, n = (sum(x[i] for x in r.get("held_out", {}).values()) for i in (0, 1))
            held = cell(k, n)
            print(f"| {who} | {r['samples']} | {r['seconds']} | {r['samples_per_s']} | {r['reward_mean']} | {held} |")
        print(f"reasonlm: sampling {result['reasonlm']['sample_s']}s, updates {result['reasonlm']['update_s']}s; "
              f"speedup {result['reasonlm']['samples_per_s'] / result['trl']['samples_per_s']:.2f}x")
        return
    adapter = args.adapter or paths.adapter("rl")
    model, tokenizer = load_adapter(base_model(dataclasses.replace(recipe, out_dir=paths.out_dir), cfg.model), adapter)
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
