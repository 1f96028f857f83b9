"""Data stage: generate verified step-by-step problems and write them as a dataset.

    reasonlm data recipes/tiny-cpu.yaml            -> <out_dir>/data/

Splits (every example is checked by its task's checker before it is written):
  base        the base model's pretraining corpus: short problems (`base_steps`), the primitives
  train       fine-tuning problems with `train_steps` steps
  validation  in-distribution, for validation loss during training
  test        in-distribution held-out problems, `n_test_per_steps` for every n_steps
  test_ood    longer than any training problem (`ood_steps`): length generalisation

Eval splits are generated first; train and base then skip any question an eval split holds
(exact match of the normalised question), so no test question is ever trained on.
Output: a `datasets.DatasetDict` (save_to_disk), `jsonl/<split>.jsonl`, the resolved config,
and a dataset card README.md. Written to a temporary directory, then renamed.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections import Counter

from reasonlm.config import DataConfig, save_resolved
from reasonlm.tasks import get_task

EVAL_SPLITS = ("validation", "test", "test_ood")
SPLITS = ("base", "train", *EVAL_SPLITS)


class DataError(ValueError):
    """A data problem reported as one line."""


def normalize_question(q: str) -> str:
    """Key for de-duplication and decontamination: case, spacing and punctuation folded."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w+\-*/=.() ]", " ", q.casefold())).strip()


def make_tasks(cfg: DataConfig) -> list[tuple[object, float, dict]]:
    out = []
    for spec in cfg.tasks:
        if not isinstance(spec, dict) or "name" not in spec:
            raise DataError(f"data.tasks entries need a 'name', got {spec!r}")
        unknown = set(spec) - {"name", "weight", "args", "steps"}
        if unknown:
            raise DataError(f"data.tasks[{spec['name']}]: unknown key(s) {sorted(unknown)}; valid: args, name, steps, weight")
        out.append((get_task(spec["name"], **(spec.get("args") or {})), float(spec.get("weight", 1.0)), spec))
    if not out:
        raise DataError("data.tasks is empty: name at least one task family")
    return out


def generate_split(tasks, rng: random.Random, n: int, steps: list[int], split: str,
                   exclude: set[str], unique: bool) -> list[dict]:
    """n problems; n_steps cycles evenly through `steps`; family drawn by weight."""
    weights = [w for _, w, _ in tasks]
    rows, seen, misses = [], set(), 0
    while len(rows) < n:
        n_steps = steps[len(rows) % len(steps)]
        task, _, spec = rng.choices(tasks, weights)[0]
        if spec.get("steps"):
            lo, hi = spec["steps"]
            n_steps = min(max(n_steps, lo), hi)
        ex = task.generate(rng, n_steps)
        key = normalize_question(ex["question"])
        if key in exclude or (unique and key in seen):
            misses += 1
            if misses > 50 * n + 1000:
                raise DataError(f"split {split!r}: only {len(rows)} of {n} distinct problems exist outside the "
                                f"eval splits for steps {steps}; lower the count or widen the task's knobs")
            continue
        seen.add(key)
        check = task.check(ex, ex["steps"], ex["answer"])
        if not check.chain_valid:  # a generator bug must never reach the data
            raise DataError(f"task {task.name} produced a gold solution its checker rejects: {ex}")
        rows.append({"id": f"{split}-{len(rows):07d}", "family": task.name, "question": ex["question"],
                     "steps": ex["steps"], "answer": ex["answer"], "n_steps": ex["n_steps"],
                     "meta": json.dumps(ex.get("meta") or {}, sort_keys=True)})
    return rows


def build_splits(cfg: DataConfig) -> dict[str, list[dict]]:
    tasks = make_tasks(cfg)
    rng = random.Random(cfg.seed)
    lo, hi = cfg.train_steps
    olo, ohi = cfg.ood_steps
    if not (1 <= lo <= hi < olo <= ohi):
        raise DataError(f"need 1 <= train_steps <= ood_steps with ood longer, got train_steps={cfg.train_steps} ood_steps={cfg.ood_steps}")
    eval_lo = max(lo, cfg.eval_min_steps)
    in_dist, ood = list(range(eval_lo, hi + 1)), list(range(olo, ohi + 1))
    splits: dict[str, list[dict]] = {}
    taken: set[str] = set()
    for name, n, steps in (("test_ood", cfg.n_test_per_steps * len(ood), ood),
                           ("test", cfg.n_test_per_steps * len(in_dist), in_dist),
                           ("validation", cfg.n_validation, in_dist)):
        splits[name] = generate_split(tasks, rng, n, steps, name, taken, unique=True)
        taken |= {normalize_question(r["question"]) for r in splits[name]}
    splits["train"] = generate_split(tasks, rng, cfg.n_train, list(range(lo, hi + 1)), "train", taken, unique=False)
    if cfg.curriculum:
        splits["train"].sort(key=lambda r: r["n_steps"])
    else:
        rng.shuffle(splits["train"])
    blo, bhi = cfg.base_steps
    splits["base"] = generate_split(tasks, rng, cfg.n_base, list(range(blo, bhi + 1)), "base", taken, unique=False)
    return splits


def run(cfg: DataConfig, out_dir: str) -> str:
    """Build the dataset into <out_dir>/data atomically; returns the path."""
    from datasets import Dataset, DatasetDict, Features, Sequence, Value

    final = os.path.join(out_dir, "data")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    splits = build_splits(cfg)
    features = Features({"id": Value("string"), "family": Value("string"), "question": Value("string"),
                         "steps": Sequence(Value("string")), "answer": Value("string"),
                         "n_steps": Value("int32"), "meta": Value("string")})
    dd = DatasetDict({k: Dataset.from_list(v, features=features) for k, v in splits.items()})
    dd.save_to_disk(tmp)
    os.makedirs(os.path.join(tmp, "jsonl"))
    for name, rows in splits.items():
        with open(os.path.join(tmp, "jsonl", f"{name}.jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    save_resolved(cfg, tmp)
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(dataset_card(cfg, splits))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    counts = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"data: wrote {final} ({counts})")
    return final


def dataset_card(cfg: DataConfig, splits: dict[str, list[dict]]) -> str:
    lines = ["---", "license: apache-2.0", "task_categories: [text-generation]", "---", "",
             "# reasonlm chain-of-thought dataset", "",
             "Generated by `reasonlm data`; every gold solution was verified step by step by its task's checker.", "",
             f"Seed {cfg.seed}; tasks: {json.dumps(cfg.tasks)}", "", "| split | n_steps | count |", "|---|---|---|"]
    for name, rows in splits.items():
        for steps, count in sorted(Counter(r["n_steps"] for r in rows).items()):
            lines.append(f"| {name} | {steps} | {count} |")
    return "\n".join(lines) + "\n"


def load(path: str):
    """The DatasetDict written by `run`, with a one-line error if it is not there."""
    from datasets import load_from_disk
    if not os.path.isdir(path):
        raise DataError(f"dataset not found: {path} (run `reasonlm data RECIPE` first)")
    try:
        return load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path} is not a dataset written by `reasonlm data`: {str(e).splitlines()[0]}") from None
