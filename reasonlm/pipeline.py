"""The whole pipeline: data -> base -> train (CoT) -> train (direct ablation) -> eval.

    reasonlm pipeline recipes/tiny-cpu.yaml [out_dir=DIR]

The ablation trains the same base with the same LoRA settings and the same number of steps
on direct answers only ('#### 7', no steps), so the report shows what the steps buy at every
n_steps. <out_dir>/eval/report.json holds the CoT metrics with the direct ones under "direct".
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from reasonlm import base, data, evaluate, train
from reasonlm.config import Recipe, RunPaths, save_resolved
from reasonlm.example import read_dataset
from reasonlm.model import load_tokenizer


def direct_batch_tokens(cot_cfg, base_model: str, paths: RunPaths) -> int:
    """Token budget per step that gives the direct run as many problems per step as the CoT run.

    Direct completions are a few tokens long, so at equal tokens per step the ablation would
    see several times more problems; equal problems and equal steps is the fair comparison.
    """
    tokenizer = load_tokenizer(base_model)
    rows = read_dataset(cot_cfg.data or paths.data)["train"].select(range(500))
    cot = sum(len(ids) for ids, _ in train.encode_rows(rows, tokenizer, "cot", 10**6))
    direct = sum(len(ids) for ids, _ in train.encode_rows(rows, tokenizer, "direct", 10**6))
    rows_per_step = max(1, round(cot_cfg.batch_tokens * direct / cot / cot_cfg.seq_len))
    return rows_per_step * cot_cfg.seq_len


def run(recipe: Recipe) -> dict:
    out, paths = recipe.out_dir, RunPaths(recipe.out_dir)
    os.makedirs(out, exist_ok=True)
    save_resolved(recipe, out, "recipe.yaml")
    timing = {}

    def timed(name, fn):
        t0 = time.time()
        result = fn()
        timing[name] = round(time.time() - t0, 1)
        print(f"== {name} done in {timing[name]}s")
        return result

    timed("data", lambda: data.run(recipe.data, out))
    base_model = timed("base", lambda: base.run(recipe))
    cot_cfg = dataclasses.replace(recipe.train, format="cot", model=recipe.train.model or base_model)
    timed("train", lambda: train.run(cot_cfg, out, "train", recipe.threads, recipe.device))
    eval_cfg = dataclasses.replace(recipe.eval, model=recipe.eval.model or base_model)
    report = timed("eval", lambda: evaluate.run(eval_cfg, out, "cot", paths.adapter("train"), "eval", recipe.threads,
                                                    device=recipe.device))
    if recipe.direct_baseline:
        direct_cfg = dataclasses.replace(cot_cfg, format="direct",
                                         batch_tokens=direct_batch_tokens(cot_cfg, base_model, paths))
        timed("train_direct", lambda: train.run(direct_cfg, out, "train-direct", recipe.threads, recipe.device))
        direct = timed("eval_direct", lambda: evaluate.run(eval_cfg, out, "direct", paths.adapter("train-direct"),
                                                             "eval-direct", recipe.threads, device=recipe.device))
        report["direct"] = {k: direct[k] for k in ("accuracy", "ood_accuracy", "by_steps", "splits")}
    for name, run_dir in (("base-run", paths.base_run), ("train", paths.train_run("train")),
                          ("train-direct", paths.train_run("train-direct"))):
        path = os.path.join(run_dir, "train_stats.json")
        if os.path.exists(path):
            with open(path) as f:
                report.setdefault("training", {})[name] = json.load(f)
    report["timing_s"] = timing
    report["total_s"] = round(sum(timing.values()), 1)
    # the eval stage wrote its samples and config already; the report now holds more
    evaluate.write_report(paths.eval("eval"), report)
    print(evaluate.markdown(report))
    print(f"pipeline: {report['total_s']}s in all; report {os.path.join(paths.eval('eval'), 'report.json')}")
    return report
