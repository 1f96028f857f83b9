"""Accuracy against generated tokens per problem: greedy, majority@k, best_of_n, step_retry and step_beam
at several budgets, for each adapter, up the recipe's length ladder (fresh problems, none a training
question).

    OMP_NUM_THREADS=2 python eval/bench_search.py recipes/tiny-cpu.yaml \
        --adapter SFT=out/tiny-cpu/train/adapter --adapter RL=out/tiny-cpu/rl/adapter \
        --steps 2 16 --per-steps 40 --out out/bench-search
    python eval/bench_search.py --toy --out /tmp/bench-search      # smoke test on a random toy model (seconds)

Problems come from the pipeline's own ladder (pipeline.ladder_config: the recipe's generated family
with its knobs, `exclude_from` the recipe's data), prompts and budgets from eval's runner (chat
prompt, budget sized from the question), each method runs through reasonlm.search with eval's engine.
Every answer is scored by eval's scoring (the gold is read there only). Tokens per problem count
everything generated, rejected lines and discarded samples included. Per method and n_steps the
JSON holds accuracy with its Wilson interval, tokens per problem, lines resampled and wall time;
`wall per token / greedy's` compares the cost of a generated token (cache reuse, batching). The PNG
draws accuracy against tokens per problem, one panel per adapter and length band.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reasonlm import search  # noqa: E402
from reasonlm.config import RunPaths, SearchConfig, load_recipe  # noqa: E402
from reasonlm.engine import engine_for  # noqa: E402
from reasonlm.evaluate import runner  # noqa: E402
from reasonlm.evaluate.scoring import score  # noqa: E402
from reasonlm.model import build_tiny, load_adapter, set_threads, train_tokenizer  # noqa: E402
from reasonlm.pipeline import ladder_config  # noqa: E402
from reasonlm.sources import Source, load_sources  # noqa: E402
from reasonlm.stats import wilson_interval  # noqa: E402
from reasonlm.tasks import get_task  # noqa: E402

# (label, settings): the budgets compared; every label is one curve point per adapter
GRID = [
    ("greedy", {}),
    ("majority@2", {"method": "majority", "k": 2}),
    ("majority@4", {"method": "majority", "k": 4}),
    ("majority@8", {"method": "majority", "k": 8}),
    ("best_of_n@4", {"method": "best_of_n", "n": 4}),
    ("best_of_n@8", {"method": "best_of_n", "n": 8}),
    ("retry naive r4", {"method": "step_retry", "retries": 4, "backup": 0}),
    ("retry r2", {"method": "step_retry", "retries": 2}),
    ("retry r4", {"method": "step_retry", "retries": 4}),
    ("retry r4 c2", {"method": "step_retry", "retries": 4, "candidates": 2}),
    ("retry r4 stop", {"method": "step_retry", "retries": 4, "on_fail": "stop"}),
    ("retry r4 budget6", {"method": "step_retry", "retries": 4, "retry_budget": 6}),
    ("retry r4 t1.0", {"method": "step_retry", "retries": 4, "temperature": 1.0}),
    ("branch r2", {"method": "step_retry", "retries": 2, "propose": "branch"}),
    ("branch r4", {"method": "step_retry", "retries": 4, "propose": "branch"}),
    ("branch r8", {"method": "step_retry", "retries": 8, "propose": "branch"}),
    ("branch r16", {"method": "step_retry", "retries": 16, "propose": "branch"}),
    ("branch r16 b3", {"method": "step_retry", "retries": 16, "propose": "branch", "backup": 3}),
    ("branch r4 c2", {"method": "step_retry", "retries": 4, "propose": "branch", "candidates": 2}),
    ("beam w2e2", {"method": "step_beam", "width": 2, "expand": 2}),
    ("beam w3e2", {"method": "step_beam", "width": 3, "expand": 2}),
]
TOY_GRID = ["greedy", "majority@4", "best_of_n@4", "retry r2", "retry r4 c2", "beam w2e2"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe", nargs="?", help="the recipe whose base model, ladder family and data are used")
    p.add_argument("--adapter", action="append", default=[], metavar="LABEL=DIR",
                   help="an adapter to compare (repeat); default SFT=<out_dir>/train/adapter, RL=<out_dir>/rl/adapter")
    p.add_argument("--model", default=None, help="base model (default <out_dir>/base)")
    p.add_argument("--steps", type=int, nargs=2, default=[2, 16], metavar=("LO", "HI"), help="ladder lengths")
    p.add_argument("--per-steps", type=int, default=40, help="fresh problems per n_steps")
    p.add_argument("--methods", default="", help="comma-separated GRID labels to run (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--band", type=int, nargs=2, default=[9, 12], metavar=("LO", "HI"),
                   help="the lengths of the second panel (where the cliff is)")
    p.add_argument("--out", default="out/bench-search", help="folder for bench_search.json and .png")
    p.add_argument("--toy", action="store_true", help="a random toy model and tiny problems: a smoke test")
    return p.parse_args(argv)


def toy_setup(args):
    """Two random 2-layer Llamas (labels toy-a, toy-b) and fresh one-digit chains: seconds, not meaning."""
    task = get_task("arithmetic", digits=1, ops="+-", min_value=0, max_value=9)
    rng = random.Random(0)
    texts = ["user", "assistant", "system"]
    for _ in range(300):
        ex = task.generate(rng, rng.randint(1, 4))
        texts.append(ex.question + "\n" + "\n".join(ex.steps))
    tok = train_tokenizer(texts, vocab_size=300)
    models = {f"toy-{c}": build_tiny(tok, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                                     max_position=256, seed=s).eval() for c, s in (("a", 0), ("b", 1))}
    lo, hi = args.steps
    examples = [dataclasses.replace(task.generate(rng, k), id=f"toy-{k}-{i}") for k in range(lo, hi + 1)
                for i in range(args.per_steps)]
    return {label: (m, tok) for label, m in models.items()}, Source("ladder", "task", examples, task=task), 24


def recipe_setup(args):
    """The adapters on the recipe's base and the pipeline's ladder source, lengths from --steps."""
    recipe = load_recipe(args.recipe)
    paths = RunPaths(recipe.out_dir)
    cfg = ladder_config(recipe, dataclasses.replace(recipe.eval, ladder_per_steps=args.per_steps), paths)
    if cfg is None:
        raise SystemExit(f"{args.recipe}: no generated family that makes ladder problems")
    cfg.sources[0].update(steps=list(args.steps))
    sources, _ = load_sources(cfg, recipe.out_dir)
    adapters = dict(a.split("=", 1) for a in args.adapter) or {"SFT": paths.adapter("train"), "RL": paths.adapter("rl")}
    models = {}
    for label, adapter in adapters.items():
        models[label] = load_adapter(args.model or paths.base, adapter, device="cpu")
    return models, sources[0], 0


def run_method(engine, tok, jobs, settings, batch_size):
    cfg = SearchConfig(**settings)
    problems = [search.Problem(j.ids, j.budget, j.seed, runner.search_checker(j.source, j.example)) for j in jobs]
    stats: dict = {}
    t0 = time.perf_counter()
    outcomes = search.run(engine, problems, cfg, batch_size=batch_size, stats=stats)
    wall = time.perf_counter() - t0
    rows = []
    for job, o in zip(jobs, outcomes):
        correct = score(job.example, engine.decode(o.tokens), job.source.task)["correct"]
        rows.append({"n_steps": job.example.n_steps, "correct": bool(correct), "generated": o.generated,
                     "retried": o.retried, "gave_up": o.gave_up})
    return rows, wall, stats


def summarize(rows, wall):
    n, k = len(rows), sum(r["correct"] for r in rows)
    acc, lo, hi = wilson_interval(k, n)
    tokens = sum(r["generated"] for r in rows)
    return {"n": n, "correct": k, "accuracy": round(acc, 4), "ci": [round(lo, 4), round(hi, 4)],
            "tokens_per_problem": round(tokens / max(n, 1), 1), "retried_per_problem": round(
                sum(r["retried"] for r in rows) / max(n, 1), 3), "wall_s": round(wall, 2)}


def plot(results, path, band):
    import matplotlib  # optional and heavy: only the picture needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    adapters = list(results)
    fig, axes = plt.subplots(len(adapters), 2, figsize=(11, 4.2 * len(adapters)), squeeze=False)
    colors = {"greedy": "black", "majority": "tab:blue", "best_of_n": "tab:green", "step_retry": "tab:red",
              "step_beam": "tab:purple"}
    for row, adapter in zip(axes, adapters):
        for ax, scope, title in ((row[0], "overall", "all lengths"), (row[1], "band", f"{band[0]}-{band[1]} steps")):
            for label, r in results[adapter].items():
                m = r.get(scope)
                if not m or not m["n"]:
                    continue
                ax.errorbar(m["tokens_per_problem"], m["accuracy"], yerr=[[m["accuracy"] - m["ci"][0]],
                                                                          [m["ci"][1] - m["accuracy"]]],
                            fmt="o", color=colors[r["settings"].get("method", "greedy")], capsize=3)
                ax.annotate(label, (m["tokens_per_problem"], m["accuracy"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel("generated tokens per problem (rejected included)")
            ax.set_ylabel("accuracy (95% Wilson)")
            ax.set_title(f"{adapter}: {title}")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if not args.toy and not args.recipe:
        raise SystemExit("usage: bench_search.py RECIPE [--adapter LABEL=DIR ...] | bench_search.py --toy")
    if args.toy:
        args.steps, args.per_steps = (args.steps if args.steps != [2, 16] else [2, 3]), min(args.per_steps, 2)
    set_threads(args.threads or int(os.environ.get("OMP_NUM_THREADS") or 0))
    models, source, max_new = toy_setup(args) if args.toy else recipe_setup(args)
    wanted = [s for s in args.methods.split(",") if s] or (TOY_GRID if args.toy else [label for label, _ in GRID])
    grid = [(label, settings) for label, settings in GRID if label in wanted]
    print("command: python eval/bench_search.py " + " ".join(sys.argv[1:] if argv is None else argv))
    results: dict = {}
    for adapter, (model, tok) in models.items():
        engine = engine_for(model, tok)
        cfg = dataclasses.replace(load_recipe(None).eval, max_new_tokens=max_new)
        jobs = runner.plan_jobs([source], tok, cfg, "cot", engine.context_size)
        results[adapter] = {}
        for label, settings in grid:
            rows, wall, stats = run_method(engine, tok, jobs, settings, args.batch_size)
            by_steps = {}
            for k in sorted({r["n_steps"] for r in rows}):
                by_steps[str(k)] = summarize([r for r in rows if r["n_steps"] == k], 0.0)
            band = [r for r in rows if args.band[0] <= r["n_steps"] <= args.band[1]]
            results[adapter][label] = {"settings": settings, "overall": summarize(rows, wall),
                                       "band": summarize(band, 0.0) if band else None, "by_steps": by_steps,
                                       "session": stats}
            o = results[adapter][label]["overall"]
            print(f"| {adapter} | {label} | {o['accuracy']:.3f} [{o['ci'][0]:.3f}, {o['ci'][1]:.3f}] | "
                  f"{o['tokens_per_problem']} | {o['retried_per_problem']} | {o['wall_s']} |", flush=True)
        greedy = results[adapter].get("greedy")
        for label, r in results[adapter].items():
            if greedy and greedy["overall"]["tokens_per_problem"]:
                g, o = greedy["overall"], r["overall"]
                o["tokens_vs_greedy"] = round(o["tokens_per_problem"] / g["tokens_per_problem"], 2)
                per_token = o["wall_s"] / max(o["tokens_per_problem"] * o["n"], 1)
                o["wall_per_token_vs_greedy"] = round(per_token / max(g["wall_s"] / max(g["tokens_per_problem"] * g["n"], 1),
                                                                      1e-12), 2)
    os.makedirs(args.out, exist_ok=True)
    report = {"command": " ".join(sys.argv), "steps": list(args.steps), "per_steps": args.per_steps,
              "band": list(args.band), "results": results}
    with open(os.path.join(args.out, "bench_search.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    plot(results, os.path.join(args.out, "bench_search.png"), args.band)
    print(f"wrote {os.path.join(args.out, 'bench_search.json')} and bench_search.png")


if __name__ == "__main__":
    main()
