"""The whole pipeline: data -> base -> train (CoT) -> train (direct ablation) -> RL -> eval.

    reasonlm pipeline recipes/tiny-cpu.yaml [out_dir=DIR] [--force]

Run again on a finished run, it skips every stage whose settings (and inputs) are unchanged and
reruns a changed stage and every stage after it that reads its output (StageRecord below; a
stage's settings hash is config.config_hash, the one a checkpoint records);
`--force` reruns them all.

The ablation trains the same base with the same LoRA settings and the same number of steps
on direct answers only ('#### 7', no steps), so the report shows what the steps buy at every
n_steps. With an `rl:` section, RL starts from the CoT adapter (reasonlm/rl/) and its adapter
is evaluated on the same splits (eval-rl). Every model is also run up the length ladder (below):
fresh problems of every length from 2 to twice the longest trained chain (eval.ladder_steps), so the
cliff past the training lengths, and how far RL moves it, shows in one table and one plot.
<out_dir>/eval/report.json holds the CoT metrics, the direct ones under "direct", the RL ones
under "rl" and the ladder under "ladder".
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

from reasonlm import base, data, evaluate, modelcard, outputs, rl, train
from reasonlm.config import DIRECT_RUN, EvalConfig, Recipe, RunPaths, base_model, config_hash, save_resolved
from reasonlm.example import read_dataset
from reasonlm.model import load_tokenizer
from reasonlm.outputs import atomic_write
from reasonlm.tasks import get_task, is_importer, load_plugins

REPORTED = ("accuracy", "ood_accuracy", "by_steps", "splits")  # what the report keeps of the direct and RL evals
LADDER = "ladder"  # the ladder's source: one section of each ladder eval


def direct_batch_tokens(cot_cfg, base_name: str, paths: RunPaths) -> int:
    """Token budget per step that gives the direct run as many problems per step as the CoT run.

    Direct completions are a few tokens long, so at equal tokens per step the ablation would
    see several times more problems; equal problems and equal steps is the fair comparison.
    """
    tokenizer = load_tokenizer(base_name)
    rows = read_dataset(cot_cfg.data or paths.data)["train"].select(range(500))
    cot = sum(len(ids) for ids, _ in train.encode_rows(rows, tokenizer, "cot", 10**6))
    direct = sum(len(ids) for ids, _ in train.encode_rows(rows, tokenizer, "direct", 10**6))
    rows_per_step = max(1, round(cot_cfg.batch_tokens * direct / cot / cot_cfg.seq_len))
    return rows_per_step * cot_cfg.seq_len


def run(recipe: Recipe, force: bool = False) -> dict:
    load_plugins(recipe.all_task_files)  # the stages do too; the pipeline names families itself (ladder_config)
    out, paths = recipe.out_dir, RunPaths(recipe.out_dir)
    record = StageRecord(out, force)  # an unreadable stages.json stops here, before anything is written
    outputs.claim(out, "pipeline", ("recipe.yaml", "stages.json"))  # so does a folder of the user's
    save_resolved(recipe, out, "recipe.yaml")

    def eval_stage(name: str, cfg: EvalConfig, fmt: str, adapter: str, folder: str, trained_by: str) -> str:
        """One eval of one adapter, a stage reading data, base and the stage that trained it."""
        report = paths.report(folder)
        record.stage(name, config_hash(cfg, out), ["data", "base", trained_by], report,
                     lambda fresh: evaluate.run(recipe, dataclasses.replace(cfg, resume=cfg.resume and not fresh), fmt,
                                                adapter, folder))
        return report

    record.stage("data", config_hash(recipe.data), [], paths.data, lambda fresh: data.run(recipe))
    base_name = base_model(recipe)
    record.stage("base", config_hash(recipe.base, out), ["data"],
                 paths.base if recipe.base.model == "tiny" else None,
                 lambda fresh: base.run(recipe, resume="never" if fresh else "auto"))
    cot_cfg = dataclasses.replace(recipe.train, format="cot", model=base_model(recipe, recipe.train.model))
    record.stage("train", config_hash(cot_cfg, out), ["data", "base"], paths.adapter("train"),
                 lambda fresh: train.run(dataclasses.replace(recipe, train=dataclasses.replace(
                     cot_cfg, resume="never" if fresh else cot_cfg.resume)), "train"))
    eval_cfg = dataclasses.replace(recipe.eval, model=base_model(recipe, recipe.eval.model))
    ladder_cfg = ladder_config(recipe, eval_cfg, paths)
    eval_report = eval_stage("eval", eval_cfg, "cot", paths.adapter("train"), "eval", "train")
    ladders = {}  # model -> its ladder report
    if ladder_cfg:
        ladders["SFT"] = eval_stage("ladder", ladder_cfg, "cot", paths.adapter("train"), "eval-ladder", "train")
    if recipe.direct_baseline:
        direct_cfg = dataclasses.replace(cot_cfg, format="direct")
        record.stage("train_direct", config_hash(direct_cfg, out), ["data", "base"], paths.adapter(DIRECT_RUN),
                     lambda fresh: train.run(dataclasses.replace(recipe, train=dataclasses.replace(
                         direct_cfg, batch_tokens=direct_batch_tokens(cot_cfg, base_name, paths),
                         resume="never" if fresh else direct_cfg.resume)), DIRECT_RUN))
        eval_stage("eval_direct", eval_cfg, "direct", paths.adapter(DIRECT_RUN), "eval-direct", "train_direct")
        if ladder_cfg:
            ladders["direct"] = eval_stage("ladder_direct", ladder_cfg, "direct", paths.adapter(DIRECT_RUN),
                                           "eval-ladder-direct", "train_direct")
    if recipe.rl:
        rl_cfg = dataclasses.replace(recipe.rl, model=base_model(recipe, recipe.rl.model))
        record.stage("rl", config_hash(rl_cfg, out), ["data", "base", "train"], paths.adapter("rl"),
                     lambda fresh: rl.run(dataclasses.replace(recipe, rl=dataclasses.replace(
                         rl_cfg, resume="never" if fresh else rl_cfg.resume))))
        eval_stage("eval_rl", eval_cfg, "cot", paths.adapter("rl"), "eval-rl", "rl")
        if ladder_cfg:
            ladders["SFT+RL"] = eval_stage("ladder_rl", ladder_cfg, "cot", paths.adapter("rl"), "eval-ladder-rl", "rl")
    report = evaluate.load_report(eval_report)
    if not record.ran:  # a finished run, nothing changed: the report is already complete
        print(evaluate.markdown(report))
        print(f"pipeline: every stage is up to date (reasonlm pipeline ... --force reruns them); report {eval_report}")
        return report
    for key, folder, wanted in (("direct", "eval-direct", recipe.direct_baseline), ("rl", "eval-rl", recipe.rl)):
        if wanted:
            other = evaluate.load_report(paths.report(folder))
            report[key] = {k: other[k] for k in REPORTED}
    if ladders:
        sources = ladder_cfg.sources[0]
        report["ladder"] = {"family": sources["task"], "steps": sources["steps"], "n_per_steps": sources["n_per_steps"],
                            "trained_steps": recipe.data.train_steps[1],
                            "models": {m: evaluate.load_report(p)["splits"][LADDER]["by_steps"]
                                       for m, p in ladders.items()}}
    for name, run_dir in (("base-run", paths.base_run), ("train", paths.train_run("train")),
                          (DIRECT_RUN, paths.train_run(DIRECT_RUN)), ("rl", paths.train_run("rl"))):
        for stats in ("train_stats.json", "rl_stats.json"):
            path = os.path.join(run_dir, stats)
            if os.path.exists(path):
                with open(path) as f:
                    report.setdefault("training", {})[name] = json.load(f)
    report["timing_s"] = record.seconds()
    report["total_s"] = round(sum(report["timing_s"].values()), 1)
    # the eval stage wrote its samples and config already; the report now holds more
    evaluate.write_report(paths.eval("eval"), report)
    write_model_cards(recipe, paths)
    print(evaluate.markdown(report))
    print(f"pipeline: {report['total_s']}s in all; report {eval_report}")
    return report


def write_model_cards(recipe: Recipe, paths: RunPaths) -> None:
    """Rewrite the card each training stage wrote into its adapter, now with its eval results."""
    for run_name, wanted in (("train", True), (DIRECT_RUN, recipe.direct_baseline), ("rl", recipe.rl)):
        if wanted:
            modelcard.adapter_card(paths.adapter(run_name), paths.data,
                                   modelcard.run_report_path(paths.train_run(run_name)))


def ladder_config(recipe: Recipe, eval_cfg: EvalConfig, paths: RunPaths) -> EvalConfig | None:
    """The length ladder's eval: eval.ladder_per_steps fresh problems at every n_steps of
    eval.ladder_steps (default: 2 to twice data.train_steps' longest), of the recipe's first
    generated family that can make them (with its knobs), none of them a training question; greedy,
    each answer's budget sized from its question (example.answer_budget), so the longest chains fit.
    None without a ladder."""
    low, top = eval_cfg.ladder_steps or [2, 2 * recipe.data.train_steps[1]]
    family = next((t for t in recipe.data.tasks if not is_importer(get_task(t["name"]))
                   and (t.get("steps") is None or t["steps"][1] >= top)), None)
    if not eval_cfg.ladder_per_steps or family is None:
        return None
    source = {"task": family["name"], "args": dict(family.get("args") or {}), "steps": [low, top],
              "n_per_steps": eval_cfg.ladder_per_steps, "name": LADDER, "exclude_from": paths.data}
    return dataclasses.replace(eval_cfg, sources=[source], max_new_tokens=0, max_problems=0, temperature=0.0,
                               samples=1, ks=[], shots=0, min_accuracy=0.0, thresholds={}, baseline="")


class PipelineError(ValueError):
    """A pipeline problem reported as one line."""


# What a stage's output holds when it is whole (an output that is a file is whole when it is there).
WHOLE = {"dataset_dict.json": ("dataset_dict.json", "stats.json"),  # the data stage's dataset
         "adapter_config.json": ("adapter_config.json", "adapter_model.safetensors"),  # an adapter
         "": ("config.json", "tokenizer_config.json", "tokenizer.json")}  # a model (its weights: below)


def whole(output: str) -> bool:
    """Whether a stage's output is all there: a file exists; a dataset, an adapter or a model
    folder holds every file it is read with (a base without model.safetensors or its tokenizer is
    not done, whatever stages.json says)."""
    if not os.path.isdir(output):
        return os.path.isfile(output)
    kind = next(k for k in WHOLE if not k or os.path.isfile(os.path.join(output, k)))
    if not all(os.path.isfile(os.path.join(output, f)) for f in WHOLE[kind]):
        return False
    return kind != "" or any(os.path.isfile(os.path.join(output, f))
                             for f in ("model.safetensors", "model.safetensors.index.json"))


def read_stages(path: str) -> dict:
    """stages.json's entries ({} when there is none); anything else there is one line: the pipeline
    cannot tell which stages are done, and will not overwrite a file it cannot read as its own."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (ValueError, OSError) as e:  # ValueError: not JSON, or not UTF-8
        why = f"not JSON ({str(e).splitlines()[0][:80]})"
    else:
        if isinstance(entries, dict) and all(isinstance(e, dict) and isinstance(e.get("hash"), str)
                                             and isinstance(e.get("finished"), bool) for e in entries.values()):
            return entries
        why = "not a record of stages ({name: {hash, finished, seconds}})"
    raise PipelineError(f"{path}: {why}; move it away (every stage then reruns) or choose another out_dir")


class StageRecord:
    """<out_dir>/stages.json: per stage, the hash of its settings and of its inputs' hashes, whether
    it finished, and how long it took. A stage whose hash matches a finished entry (and whose output
    is still there) is skipped; any change reruns it and, through the hashes, every stage after it
    that reads its output. A stage reruns from scratch (no resume) when its settings changed, and
    continues an interrupted run of the same settings."""

    def __init__(self, out_dir: str, force: bool):
        self.path, self.force = RunPaths(out_dir).stages, force
        self.entries = read_stages(self.path)
        self.ran: list[str] = []

    def stage(self, name: str, settings_hash: str, inputs: list[str], output: str | None, fn) -> None:
        """Run `fn(fresh)` unless the stage is done: same settings and inputs, finished, its output
        whole (`whole`), and none of its inputs rerun now. fresh: start over rather than resume (new
        settings, or an input that was just made again)."""
        key = hashlib.sha256(json.dumps([settings_hash, [self.entries[i]["hash"] for i in inputs]]).encode()).hexdigest()
        old = self.entries.get(name, {})
        remade = [i for i in inputs if i in self.ran]
        if (not self.force and old.get("hash") == key and old.get("finished") and not remade
                and (output is None or whole(output))):
            print(f"== {name}: up to date, skipped")
            return
        if old.get("hash") == key and old.get("finished") and not remade and not self.force:
            print(f"== {name}: {output} is missing or incomplete; running it again")
        fresh = self.force or (bool(old) and (old.get("hash") != key or bool(remade)))
        self._write(name, {"hash": key, "finished": False})
        t0 = time.time()
        fn(fresh)
        seconds = round(time.time() - t0, 1)
        self._write(name, {"hash": key, "finished": True, "seconds": seconds})
        self.ran.append(name)
        print(f"== {name} done in {seconds}s")

    def seconds(self) -> dict:
        return {name: e["seconds"] for name, e in self.entries.items() if "seconds" in e}

    def _write(self, name: str, entry: dict) -> None:
        self.entries[name] = entry
        atomic_write(self.path, json.dumps(self.entries, indent=1))
