"""Imports: importers' records, checked like generated problems, then decontaminated and capped.

`load_imports` reads every importer of the mix, checks each record (its shape, then its task's
checker on its gold solution) and groups the Examples by where they go (`into`: train or an eval
split of their own). `take_imported` then makes one split's share: decontaminated against the
Blocklist, each entry's `count` (a seeded sample of what is left), de-duplicated.
"""
from __future__ import annotations

import json
import random
from collections import Counter

from reasonlm.config import DataConfig
from reasonlm.data.decontaminate import Blocklist, Removed, digest
from reasonlm.data.mix import DataError, MixEntry
from reasonlm.example import Example, question_key


def load_imports(entries: list[MixEntry], cfg: DataConfig) -> tuple[dict, list[dict]]:
    """{into: [(entry, Example)]} of every importer's verified records, and one report per importer."""
    by_split, reports = {}, []
    for entry in entries:
        if not entry.imported:
            continue
        hint = "" if cfg.on_error == "skip" else " (data.on_error: skip drops and counts such records)"
        try:
            records, report = entry.load()
        except ValueError as e:  # the importer's own message names the file and line
            more = hint if "malformed" in str(e) else ""
            raise DataError(f"data.tasks[{entry.index}] ({entry.name}): {e}{more}") from None
        report = {**json.loads(json.dumps(report)), "failed_check": 0}
        examples = []
        for k, example in enumerate(records):
            problem = record_problem(example)
            if problem is None and not entry.verify(example):
                problem = "its gold solution fails the checker"
            if problem is not None:
                if cfg.on_error == "raise":
                    meta = example.meta
                    where = f"{meta.get('source', entry.name)}:{meta.get('line', meta.get('index', k))}"
                    raise DataError(f"data.tasks[{entry.index}] ({entry.name}): {where}: {problem}{hint}")
                report["failed_check"] += 1
                continue
            examples.append(example)
        reports.append({"source": entry.index, "name": entry.name, "into": entry.into, "report": report})
        by_split.setdefault(entry.into, []).extend((entry, e) for e in examples)
    return by_split, reports


def record_problem(example: Example) -> str | None:
    """Why an imported example is unusable, or None."""
    if not example.question.strip():
        return "missing or empty question"
    if not example.answer.strip():
        return "missing or empty answer"
    return None


def take_imported(pairs: list, blocked: Blocklist | None, removed: Removed, seen: set | None, dedup: str,
                  seed: int, split: str, dups: Counter, reports: list[dict]) -> list[Example]:
    """Imported Examples of one split: decontaminated, then each entry's `count` (a seeded sample
    of what is left), then de-duplicated against everything kept so far (`seen`)."""
    by_entry: dict[int, list] = {}
    for entry, example in pairs:
        hit = blocked.hit(example.question, question_key(example.question)) if blocked is not None else None
        if hit is not None:
            removed.add(example.question, *hit)
        else:
            by_entry.setdefault(entry.index, []).append(example)
    out, entries = [], {entry.index: entry for entry, _ in pairs}
    for index, entry in entries.items():
        examples = by_entry.get(index, [])
        if entry.count is not None and entry.count < len(examples):
            keep = sorted(random.Random(f"{seed}/import/{index}").sample(range(len(examples)), entry.count))
            examples = [examples[k] for k in keep]
        taken = 0
        for example in examples:
            if seen is not None:
                d = digest(example.question if dedup == "exact" else question_key(example.question))
                if d in seen:
                    dups[split] += 1
                    continue
                seen.add(d)
            out.append(example)
            taken += 1
        next(r for r in reports if r["source"] == index)["report"]["taken"] = taken
    return out
