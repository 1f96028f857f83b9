"""Data stage: mix task families and imported datasets into verified step-by-step problems.

    reasonlm data data/mix-reasoning.yaml          -> <out_dir>/data/
    reasonlm data recipes/tiny-cpu.yaml            (any recipe: only its `out_dir` and `data:` are used)
    print_stats("out/mix-reasoning/data")          (`reasonlm data --stats PATH`)

The mix (`data.tasks`, one MixEntry each, read in data/mix.py):
  generated   {name: arithmetic, weight: 2, steps: [1, 8], args: {digits: 1}}
              A family only makes problems whose n_steps is in its `steps` range. Every split's
              n_steps cycle evenly through the split's range; each problem's family is drawn by
              weight among the families that cover its n_steps.
              {name: arithmetic_step, weight: 2, steps: [1, 1], splits: [base]}
              `splits` keeps a family to some generated splits (here: base pretraining only).
  imported    {name: gsm8k, args: {path: gsm8k_train.jsonl, split: train}, count: 5000}
              {name: gsm8k, args: {path: gsm8k_test.jsonl, split: test}, into: gsm8k_test}
              An importer's records go to train (on top of n_train generated ones, `count` caps
              them) or, with `into`, to an eval split of their own that train is decontaminated
              against. Each record is checked by its task's checker like a generated one; a
              malformed one raises (file:line) or is skipped and counted (`on_error`).

Before anything is made, every generated family passes RL's reward preflight (MixEntry.preflight):
its gold solutions score 1 and corrupted copies less, so a family (a plugin's, say) whose checker
rejects its own gold stops the build with one line.

Splits (every example is checked by its task's checker before it is written):
  base        the base model's pretraining corpus: short problems (`base_steps`), the primitives
  train       fine-tuning problems with `train_steps` steps, plus imported records
  validation  in-distribution, for validation loss during training
  test        in-distribution held-out problems, `n_test_per_steps` for every n_steps
  test_ood    longer than any training problem (`ood_steps`): length generalisation
  <into>      imported eval splits (e.g. gsm8k_test)

Decontamination: eval splits are made first (distinct, and distinct from each other). Then train
and base skip every question that matches an eval split or a `decontaminate_against` suite:
same normalized text, or, for questions of at least `ngram_n` words, any n-word sequence shared
with an imported eval split or a suite (see decontaminate.Blocklist for why not with generated splits).
Generated rejects are replaced by fresh draws of the same family; imported ones are dropped.
What was removed (counts and examples) is in decontamination.json and the card.

Output (<out_dir>/data/, built in data.tmp/ and renamed, so a failed or interrupted build never
leaves a partial dataset under the final name):
  dataset_dict.json, <split>/data-*.arrow   `datasets.load_from_disk` layout (typed features)
  parquet/<split>-*.parquet                 the same rows for the Hub (the card's `configs:`)
  jsonl/<split>.jsonl                       the same rows as JSON lines
  jsonl/<split>.chat.jsonl                  {"messages": [...]}: prompt + gold completion
  jsonl/<split>.prompt_completion.jsonl     {"prompt": [...], "completion": [...]} (TRL's format)
  README.md, stats.json, decontamination.json, config.yaml     (the card: data/card.py)

The chat and prompt/completion views are rendered with answer.prompt_messages and
example.render_target, the same functions the trainer tokenises through (data/writer.py).

Scale and determinism (data/generate.py): rows stream to disk in shards (`shard_rows`) as they
are generated, so memory does not grow with the count. Problems are made in jobs of JOB_ROWS, each with its own
seed (seed/split/job); worker processes run jobs and the results are consumed in job order, so
the same recipe gives byte-identical files for any number of workers.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections import Counter

import reasonlm
from reasonlm import outputs
from reasonlm.config import DataConfig, Recipe, RunPaths, config_hash, save_resolved
from reasonlm.data.card import print_stats, write_card
from reasonlm.data.decontaminate import Blocklist, Removed, suite_questions
from reasonlm.data.generate import (GENERATOR_VERSION, Runner, by_steps, generated_rows, interleave, resolve_workers,
                                    split_targets)
from reasonlm.data.imports import load_imports, take_imported
from reasonlm.data.mix import EVAL_SPLITS, SPLITS, DataError, MixEntry, mix_entries
from reasonlm.data.writer import SplitStats, SplitWriter, disk_templates
from reasonlm.tasks import BUILT_IN, ORIGINS, load_plugins

TOKEN_SAMPLE = 20_000  # rows per split that are tokenized for the token-length statistics

__all__ = ["run", "write_dataset", "print_stats", "DataError"]


def run(recipe: Recipe) -> str:
    """Build the dataset of recipe.data into <out_dir>/data atomically; returns the path. An
    existing <out_dir>/data is replaced only if the data stage wrote it (outputs.py)."""
    load_plugins(recipe.all_task_files)
    cfg, final = recipe.data, RunPaths(recipe.out_dir).data
    with outputs.lock(final):
        outputs.check_replaceable(final, "data")
        tmp = outputs.fresh_temporary(final, "data")
        # error, full disk or Ctrl-C: no partial dataset is left behind, and the old one is intact
        with outputs.writing(final, tmp):
            stats = write_dataset(cfg, tmp)
        outputs.replace(tmp, final, "data")
    counts = ", ".join(f"{k} {v['rows']}" for k, v in stats["splits"].items())
    print(f"data: wrote {final} ({counts})")
    return final


def write_dataset(cfg: DataConfig, tmp: str) -> dict:
    """Write every split into `tmp`; returns stats.json's content."""
    t0 = time.time()
    entries = mix_entries(cfg)
    gens = [e for e in entries if not e.imported]
    for entry in gens:
        entry.preflight(cfg)
    chash = config_hash(cfg)
    tokenizer = stats_tokenizer(cfg.tokenizer)
    os.makedirs(tmp, exist_ok=True)
    state_template, info_text = disk_templates(tmp)
    imports, import_reports = load_imports(entries, cfg)
    lo, hi = cfg.train_steps
    olo, ohi = cfg.ood_steps
    in_dist, ood = list(range(max(lo, cfg.eval_min_steps), hi + 1)), list(range(olo, ohi + 1))
    summaries, removed, dups = {}, {}, Counter()

    def write(split: str, rows, expected: int) -> None:
        fp = hashlib.sha256(f"{chash}/{split}/{GENERATOR_VERSION}/{reasonlm.__version__}".encode()).hexdigest()[:16]
        stats = SplitStats(tokenizer, -(-expected // TOKEN_SAMPLE))
        writer = SplitWriter(tmp, split, cfg, stats, fp)
        t = time.time()
        for example in rows:
            writer.add(example)
        summaries[split] = writer.close(state_template, info_text)
        dt = time.time() - t
        rate = writer.n / max(dt, 1e-9)
        print(f"data: {split:<12} {writer.n:>9,} rows  {dt:6.1f}s  ({rate:,.0f} rows/s)", flush=True)

    # 1. eval splits: distinct, and distinct from each other (exact normalized match)
    blocked = Blocklist(cfg.ngram_n)  # what train and base must not contain
    between_evals = Blocklist(0)
    eval_rows = {}
    inline = Runner(cfg, gens, between_evals, 1)
    for split, n, steps in (("test_ood", cfg.n_test_per_steps * len(ood), ood),
                            ("test", cfg.n_test_per_steps * len(in_dist), in_dist),
                            ("validation", cfg.n_validation, in_dist)):
        n = n if gens else 0
        targets = split_targets(split, n, steps, gens)
        rows = list(generated_rows(split, targets, "normalized", inline, Removed(), set(), Counter()))
        eval_rows[split] = rows
        for i, r in enumerate(rows):
            between_evals.add(r.question, f"{split}-{i:07d}", split)
    for split, pairs in imports.items():
        if split != "train":
            eval_rows[split] = take_imported(pairs, None, Removed(), set(), "normalized", cfg.seed, split,
                                             Counter(), import_reports)
    for split, rows in eval_rows.items():
        for i, r in enumerate(rows):
            blocked.add(r.question, f"{split}-{i:07d}", split, grams=split not in EVAL_SPLITS)
        write(split, rows, len(rows))
    unreadable = []
    for path in cfg.decontaminate_against:
        try:
            for q, where in suite_questions(path):
                if q is None:
                    unreadable.append(where)  # counted in the report; it has no question to compare
                else:
                    blocked.add(q, where, path)
        except (OSError, ValueError) as e:  # an unreadable file, or a suite's importer failing
            raise DataError(f"data.decontaminate_against: {e}") from None
    blocked.drop_boilerplate()

    # 2. train: imported records (decontaminated, deduplicated, capped) merged into generated ones
    n_gen_train, n_base = (cfg.n_train, cfg.n_base) if gens else (0, 0)
    seen = set() if cfg.dedup != "none" else None
    removed["train"] = {"generated": Removed(), "imported": Removed()}
    imported = take_imported(imports.get("train", []), blocked, removed["train"]["imported"], seen, cfg.dedup,
                             cfg.seed, "train", dups, import_reports)
    runner = Runner(cfg, gens, blocked, resolve_workers(cfg, n_gen_train + n_base))
    try:
        train_targets = split_targets("train", n_gen_train, list(range(lo, hi + 1)), gens)
        generated = generated_rows("train", train_targets, None if cfg.dedup == "none" else cfg.dedup, runner,
                                   removed["train"]["generated"], seen, dups)
        rows = interleave(generated, n_gen_train, imported, random.Random(f"{cfg.seed}/train/mix"))
        if cfg.curriculum:
            rows = by_steps(rows, os.path.join(tmp, ".work", "curriculum"))
        write("train", rows, n_gen_train + len(imported))
        seen = None  # free the dedup set before the base split

        # 3. base: the primitives; decontaminated too (it is trained on), never deduplicated
        removed["base"] = {"generated": Removed()}
        blo, bhi = cfg.base_steps
        base_targets = split_targets("base", n_base, list(range(blo, bhi + 1)), gens)
        write("base", generated_rows("base", base_targets, None, runner, removed["base"]["generated"], None, dups),
              n_base)
    finally:
        runner.close()
    shutil.rmtree(os.path.join(tmp, ".work"), ignore_errors=True)

    order = [s for s in SPLITS if s in summaries] + sorted(s for s in summaries if s not in SPLITS)
    with open(os.path.join(tmp, "dataset_dict.json"), "w") as f:
        json.dump({"splits": order}, f)
    decon = {
        "method": {"ngram_n": cfg.ngram_n,
                   "exact": "normalized question (case, spacing, punctuation folded) equals an eval question's",
                   "ngram": f"questions of >= {cfg.ngram_n} words sharing any {cfg.ngram_n}-word sequence with an "
                            f"imported eval split or an eval suite (shorter ones: exact only; generated eval splits: "
                            f"exact only, as draws of one template share its wording)" if cfg.ngram_n else "off",
                   "generated": "rejected at generation and replaced by a fresh draw",
                   "imported": "dropped"},
        "against": dict(blocked.counts),
        "unreadable_suite_lines": unreadable,
        "boilerplate_ngrams_ignored": blocked.boilerplate,
        "splits": {s: {k: v.to_dict() for k, v in parts.items()} for s, parts in removed.items()},
    }
    with open(os.path.join(tmp, "decontamination.json"), "w") as f:
        json.dump(decon, f, indent=1)
    import datasets  # heavy (seconds): imported by what writes files, never by the generation workers
    import pyarrow
    stats = {
        "provenance": {"reasonlm_version": reasonlm.__version__, "generator_version": GENERATOR_VERSION,
                       "seed": cfg.seed, "config_sha256": chash, "datasets_version": datasets.__version__,
                       "pyarrow_version": pyarrow.__version__, "tokenizer": cfg.tokenizer or None},
        "sources": [entry_info(e, import_reports) for e in entries],
        "splits": {s: summaries[s] for s in order},
        "dedup": {"mode": cfg.dedup, "removed": dict(sorted(dups.items()))},
        "decontamination": {"against": decon["against"], "ngram_n": cfg.ngram_n,
                            "removed": {s: {k: {"exact": v["exact"], "ngram": v["ngram"]} for k, v in parts.items()}
                                        for s, parts in decon["splits"].items()},
                            "examples": [e for parts in decon["splits"].values() for v in parts.values()
                                         for e in v["examples"]][:3]},
    }
    with open(os.path.join(tmp, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    save_resolved(cfg, tmp)
    write_card(tmp, stats, order)
    print(f"data: built in {time.time() - t0:.1f}s")
    return stats


def entry_info(entry: MixEntry, import_reports: list[dict]) -> dict:
    """One entry of stats.json's `sources` (the card's Sources table)."""
    info = {"name": entry.name, "kind": "imported" if entry.imported else "generated",
            "args": entry.spec.get("args") or {}, "license": entry.task.license,
            # an importer reads what others wrote: the version of the stage that read it
            "version": str(GENERATOR_VERSION if entry.imported else entry.task.version)}
    origin = ORIGINS.get(entry.name, BUILT_IN)
    if os.path.isfile(origin):  # a family from a task file: which file, and exactly which code
        with open(origin, "rb") as f:
            info.update(task_file=origin, task_file_sha256=hashlib.sha256(f.read()).hexdigest())
    elif origin != BUILT_IN:
        info.update(task_origin=origin)
    if entry.imported:
        info.update(into=entry.into, count=entry.count,
                    report=next(r["report"] for r in import_reports if r["source"] == entry.index))
    else:
        info.update(weight=entry.weight, steps=list(entry.steps) if entry.steps else None,
                    splits=list(entry.splits) if entry.splits else None)
    return info


def stats_tokenizer(name: str):
    """data.tokenizer: the tokenizer the token-length statistics count with (None: no token counts)."""
    if not name:
        return None
    # reasonlm.model imports torch (seconds): only a recipe with data.tokenizer pays for it, and never
    # the generation workers, which are spawned processes that import this package
    from reasonlm.model import ModelError, load_tokenizer
    try:
        return load_tokenizer(name)  # the trainer's loader: same template, same errors
    except ModelError as e:
        raise DataError(f"data.tokenizer: {e}") from None
