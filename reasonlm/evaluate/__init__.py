"""The eval stage: generate answers in batches, score final answers and every step, report.

    reasonlm eval recipes/tiny-cpu.yaml                    the recipe's test splits -> <out_dir>/eval/
    reasonlm eval eval/ood.yaml --recipe recipes/tiny-cpu.yaml        a suite, with the recipe's model
    reasonlm eval eval/gsm8k-sample.yaml --model DIR [--adapter DIR] [--out DIR] [key=value ...]
    accelerate launch --multi_gpu --num_processes 2 -m reasonlm eval SUITE.yaml ... sharded over 2 processes
                      (also on a CPU-only machine: accelerate's `--cpu` launcher starts one process unless
                      MPI is set up; the torchrun launcher behind --multi_gpu starts them, gloo on CPU)
    torchrun --nproc_per_node 2 -m reasonlm eval SUITE.yaml ...                 the same (torchrun directly)
    reasonlm eval SUITE.yaml ... --baseline eval/baselines/NAME.json               CI gate
    reasonlm eval compare A/report.json B/report.json                 paired difference and tests

A run writes report.json (config, model, adapter, dataset fingerprint, every metric with its
95% interval, per-problem correctness), report.md, samples.jsonl (prompt, output, extracted
answers, verdicts) and accuracy_by_steps.png. Progress: a bar with problems/s and ETA in a
terminal, a plain line per 10% (or per minute) otherwise.

Problems come from *sources* (the recipe's dataset splits by default; a suite YAML can name
dataset splits, generated task families, GSM8K-format files, reasoning-gym tasks and your own
JSONL/CSV/parquet files or Hub datasets read by column), each one
section of the report, and are prompted zero- or k-shot, with the chat template or plain text.

Generation: the (problem, sample) jobs are sorted by prompt length and cut into batches that run
with a KV cache; a finished sequence (end-of-turn token, a stop string, or its own token budget:
max_new_tokens, else sized from the question, never from the gold solution, see
example.answer_budget) leaves the batch at once; the report counts samples cut off by their budget
(`truncated`, per source). Under `accelerate launch` each
process takes the batches the engine deals it (engine.plan_batches), so the batches, and thus the
outputs, are the same as in one process; results are gathered on the main process. Every (problem, sample) samples from its
own seeded stream. Finished samples are appended per batch to samples.partial.rank<r>.jsonl, and
an interrupted run continues from them.

Scoring, per sample: the strict answer (the '#### N' line), the flexible one (last number), an
extraction failure when there is no final-answer line, the task checker's verdict on every step
(step accuracy, a fully valid chain, the position of the first wrong step, a right answer reached
through a wrong chain), and for GSM8K-format sources lm-evaluation-harness's strict-match and
flexible-extract. Every metric is reported overall, per source, per n_steps and per task family,
with counts and a bootstrap interval over problems; with samples > 1 also pass@k and maj@k.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time

from accelerate.utils import gather_object

from reasonlm import outputs
from reasonlm.config import EvalConfig, Recipe, RunPaths, base_model, is_suite, load_suite
from reasonlm.engine import context_size
from reasonlm.evaluate.compare import compare, compare_markdown, load_report
from reasonlm.evaluate.errors import EvalError
from reasonlm.evaluate.gate import check_gate, load_baseline, make_baseline
from reasonlm.evaluate.metrics import summarize
from reasonlm.evaluate.progress import Progress
from reasonlm.evaluate.report import OUTPUT_FILES, build_report, markdown, write_outputs, write_report
from reasonlm.evaluate.runner import (build_prompt, check_search_sources, is_main_process, make_batches, partial_path,
                                      plan_jobs, prepare_partial, process_state, read_partial, remove_partial,
                                      run_batch, run_id)
from reasonlm.model import load_adapter, set_threads
from reasonlm.outputs import atomic_write
from reasonlm.sources import load_sources
from reasonlm.tasks import load_plugins
from reasonlm.tracking import check_installed, finish_tracking, start_tracking, tracked_accelerator

__all__ = ["run", "evaluate", "run_suite", "EvalError", "is_suite", "load_suite", "compare", "compare_markdown",
           "load_report", "make_baseline", "load_baseline", "check_gate", "markdown", "write_outputs", "write_report",
           "atomic_write", "is_main_process", "summarize", "build_prompt"]


def run(recipe: Recipe, cfg: EvalConfig | None = None, fmt: str | None = None, adapter: str | None = None,
        name: str = "eval", directory: str | None = None) -> dict:
    """The eval stage of a recipe: `cfg` (default recipe.eval) on the recipe's base model
    (config.base_model, or eval.model) with `adapter` (default eval.adapter, else the train run's),
    in format `fmt` (eval.format, else this, else train.format); writes <out_dir>/<name>/ (or
    `directory`) with the recipe's threads, device and trackers (train.report_to). See `evaluate`."""
    load_plugins(recipe.all_task_files)
    cfg = cfg or recipe.eval
    return evaluate(cfg, recipe.out_dir, fmt or recipe.train.format, adapter, name, recipe.threads, directory,
                    recipe.train.report_to, recipe.device, model=base_model(recipe, cfg.model))


def evaluate(cfg: EvalConfig, out_dir: str | None, fmt: str = "cot", adapter: str | None = None, name: str = "eval",
             threads: int = 0, directory: str | None = None, report_to=(), device: str = "auto",
             model: str | None = None) -> dict:
    """Evaluate one model (`model`, else cfg.model) on the configured sources; writes
    <out_dir>/<name>/ (or `directory`) and returns the report. Under `accelerate launch` the
    batches are split over the processes and every process returns the full report; only the main
    process writes files. The headline metrics go once to the trackers in `report_to` (the recipe's
    train.report_to). `device`: the recipe's (auto, cpu, cuda, cuda:N, mps)."""
    if cfg.samples > 1 and cfg.temperature == 0:
        print("warning: samples > 1 with temperature 0: every sample is the same greedy output", file=sys.stderr)
    check_installed(report_to)  # before the run, not after it
    state = process_state(device)
    set_threads(threads or int(os.environ.get("OMP_NUM_THREADS") or 0), state.num_processes)  # respect an explicit limit
    paths = RunPaths(out_dir) if out_dir else None
    model_name = model or cfg.model
    if not model_name:
        raise EvalError("no model: pass --model (or --recipe)")
    if adapter is None:
        adapter = cfg.adapter or (paths.adapter() if paths else "none")
    adapter = None if adapter in ("none", "") else adapter
    directory = directory or (paths.eval(name) if paths else os.path.join("out", name))
    fmt = cfg.format or fmt
    sources, skipped = load_sources(cfg, out_dir)
    check_search_sources(sources, cfg)  # before the model loads
    model, tokenizer = load_adapter(model_name, adapter, device=device)
    model = model.to(state.device)
    context = context_size(model)
    jobs = plan_jobs(sources, tokenizer, cfg, fmt, context)
    for source in sources:
        if source.info.get("too_long") and state.is_main_process:
            print(f"warning: source {source.name!r}: skipped {source.info['too_long']} problem(s) whose prompt is "
                  f"longer than the model's context ({context} tokens); counted as too_long in the report",
                  file=sys.stderr)

    if state.is_main_process:  # refused before the lock: no lock file left beside a folder of the user's
        outputs.check_claimable(directory, "eval", OUTPUT_FILES)
    # one run per output folder (only the main process writes files); a full disk is one line
    with outputs.lock(directory, enabled=state.is_main_process), outputs.writing(directory):
        if state.is_main_process:
            outputs.claim(directory, "eval", OUTPUT_FILES)  # again, holding the lock
            prepare_partial(directory, run_id(cfg, model_name, adapter, fmt), cfg.resume)
        state.wait_for_everyone()
        done = read_partial(directory, jobs)
        state.wait_for_everyone()  # everyone has read the finished samples before anyone appends
        todo = [j for j in jobs if j.key not in done]
        if state.is_main_process and done:
            print(f"eval: resuming {directory}: {len(done)} of {len(jobs)} samples already done")
        new, seconds = generate_and_score(model, tokenizer, todo, cfg, directory, state, len(done))
        by_key = {**done, **{f"{s['split']}/{s['id']}#{s['sample']}": s for s in new}}
        samples = [by_key[j.key] for j in jobs]
        report = build_report(cfg, sources, skipped, samples, model_name, adapter, fmt)
        report.update(eval_seconds=round(seconds, 1), processes=state.num_processes, resumed_samples=len(done),
                      problems_per_s=round(len(todo) / max(cfg.samples, 1) / max(seconds, 1e-9), 2))
        if state.is_main_process:
            write_outputs(directory, report, samples, cfg)
            remove_partial(directory)
        if report_to:
            accelerator = tracked_accelerator(report_to, directory, cpu=state.device.type == "cpu")
            start_tracking(accelerator, directory, cfg)
            accelerator.log(headline_metrics(report))
            finish_tracking(accelerator)
        state.wait_for_everyone()
    return report


def headline_metrics(report: dict) -> dict:
    """What the trackers get once per eval run: every scalar metric, overall and per source,
    and the speed."""
    out = {"eval/problems_per_s": report["problems_per_s"]}
    for scope, summary in (("overall", report["overall"]), *report["splits"].items()):
        out.update({f"eval/{scope}/{k}": v for k, v in summary.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out



def generate_and_score(model, tokenizer, todo: list, cfg: EvalConfig, directory: str, state, n_done: int):
    """This process's share of the jobs, generated and scored batch by batch, each batch appended to
    its partial file (what a resumed run reads back); returns (every process's samples, seconds)."""
    mine = make_batches(todo, cfg.batch_size, state.process_index, state.num_processes)
    new: list[dict] = []
    t0 = time.time()
    # the main process shows its own share: with N processes the others run at the same pace
    progress = Progress(sum(len(b) for b in mine), "problem" if cfg.samples == 1 else "sample",
                        desc=os.path.basename(os.path.normpath(directory)), enabled=state.is_main_process)
    try:
        with open(partial_path(directory, state.process_index), "a", encoding="utf-8") as f:
            for batch in mine:
                records = run_batch(model, tokenizer, batch, cfg)
                for job, rec in zip(batch, records):
                    f.write(json.dumps({"key": job.key, **rec}) + "\n")
                f.flush()
                new += records
                progress.update(len(batch))
    except BaseException:  # interrupted or crashed: say where the finished samples are
        print(f"\neval: stopped; {n_done + len(new)} finished samples are kept in {directory}: "
              "run the same command again to continue", file=sys.stderr)
        raise
    finally:
        progress.close()
    seconds = time.time() - t0
    if state.num_processes > 1:
        new = gather_object(new)
        seconds = max(gather_object([seconds]))
    return new, seconds


def run_suite(cfg: EvalConfig, model: str | None = None, adapter: str | None = None, recipe=None,
              out: str | None = None) -> tuple[dict, str]:
    """Run a suite; the model, adapter, format and output folder come from the arguments, then the
    suite, then the recipe's outputs. Returns (report, output directory)."""
    out_dir = recipe.out_dir if recipe is not None else None
    paths = RunPaths(out_dir) if out_dir else None
    model = model or (base_model(recipe, cfg.model) if recipe is not None else cfg.model)
    if not model:
        raise EvalError(f"suite {cfg.name!r} needs a model: --model PATH_OR_HUB_ID (or --recipe RECIPE)")
    adapter = adapter or cfg.adapter or (paths.adapter() if paths else "none")
    if out is None:
        if paths:
            out = paths.eval(f"eval-{cfg.name}")
        else:
            tag = re.sub(r"[^\w.-]+", "_", os.path.basename(os.path.normpath(adapter if adapter != "none" else model)))
            out = os.path.join("out", "eval", cfg.name, tag)
    fmt = cfg.format or (recipe.train.format if recipe is not None else "cot")
    cfg = dataclasses.replace(cfg, model=model, format=fmt)
    if recipe is not None:
        report = run(recipe, cfg, fmt, adapter, directory=out)
    else:
        report = evaluate(cfg, out_dir, fmt, adapter, directory=out)
    return report, out
