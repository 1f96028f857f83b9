"""Decontamination: what train and base must not contain, and where eval questions come from.

Eval splits are made first; every eval question goes into a Blocklist, and so does every question
of a `decontaminate_against` suite (`suite_questions` reads files, directories and eval suite
YAMLs). Train and base then skip every question the Blocklist hits: the same normalized text
(example.question_key), or, for questions of at least `ngram_n` words, any n-word sequence shared
with an imported eval split or a suite. `Removed` counts what was rejected, for the report.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from collections import Counter

from reasonlm.config import load_suite
from reasonlm.data.mix import DataError
from reasonlm.example import question_key, text_lines
from reasonlm.sources import records_task, source_kind_and_name
from reasonlm.tasks import get_task

EXAMPLES_KEPT = 10  # removed questions quoted in decontamination.json
BOILERPLATE = 3  # an n-gram in this many eval questions is template text, not one question's content
QUESTION_KEYS = ("question", "problem", "prompt", "input", "query", "text")

# A word is a run of letters/digits, possibly joined by punctuation without spaces: '3+4-2',
# "mia's", '2.50' are one word each; sentence punctuation and '$' fall away.
WORD_RE = re.compile(r"[^\W_]+(?:[^\w\s]+[^\W_]+)*")


def words(q: str) -> list[str]:
    return WORD_RE.findall(q.casefold())


def digest(key: str) -> int:
    """8-byte stable hash: a million dedup keys cost ~70 MB as ints instead of ~150 MB as strings."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class Blocklist:
    """Questions a split must not contain: exact normalized questions, and word n-grams of long ones.

    Short questions (fewer than n words: arithmetic like '3+4*2') only have their exact key; an
    8-gram test on them would be meaningless. `hit` says why a question is blocked and by what.

    n-grams are taken only from text this recipe's generators did not write (imported eval splits,
    eval suites): two draws of one template share its wording, which is not leakage, and n-grams of
    generated splits would reject most short object-swap and word problems (docs/data.md). Generated eval
    splits are matched by exact normalized question. For the same reason an n-gram found in
    BOILERPLATE or more eval questions is an instruction or a template ('State the final answer
    to the following arithmetic problem'), not a question's content, and is dropped.
    """

    def __init__(self, n: int):
        self.n, self.exact, self.grams, self.counts, self.boilerplate = n, {}, {}, Counter(), 0

    def add(self, question: str, where: str, group: str, grams: bool = True) -> None:
        self.exact.setdefault(question_key(question), where)
        self.counts[group] += 1
        ws = words(question) if self.n and grams else []
        for gram in {" ".join(ws[i:i + self.n]) for i in range(len(ws) - self.n + 1)} if ws else ():
            entry = self.grams.setdefault(gram, [where, 0])
            entry[1] += 1

    def drop_boilerplate(self) -> None:
        """Call once every eval question is in: drops n-grams shared by BOILERPLATE+ questions."""
        kept = {g: w for g, (w, count) in self.grams.items() if count < BOILERPLATE}
        self.boilerplate, self.grams = len(self.grams) - len(kept), kept

    def hit(self, question: str, key: str) -> tuple[str, str] | None:
        where = self.exact.get(key)
        if where is not None:
            return "exact", where
        if self.grams:
            ws = words(question)
            for i in range(len(ws) - self.n + 1):
                where = self.grams.get(" ".join(ws[i:i + self.n]))
                if where is not None:
                    return "ngram", where
        return None


class Removed:
    """Counts (and the first few examples) of questions a Blocklist rejected."""

    def __init__(self):
        self.counts, self.examples = Counter(), []

    def add(self, question: str, reason: str, where: str) -> None:
        self.counts[reason] += 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append({"question": question, "reason": reason, "matches": where})

    def merge(self, other: "Removed") -> None:
        self.counts.update(other.counts)
        self.examples.extend(other.examples[:EXAMPLES_KEPT - len(self.examples)])

    def to_dict(self) -> dict:
        return {"exact": self.counts["exact"], "ngram": self.counts["ngram"], "examples": self.examples}



# --- suites: eval questions from files ------------------------------------------------------
def source_questions(n: int, spec: dict, seeds: list[int], path: str):
    """(question, where) of the n-th source of the suite at `path`. Every kind of sources.SOURCE_KINDS
    has its rule here (tests/test_data_decontaminate.py checks that none is missing): `task`
    sources are drawn fresh at eval time and exclude the training data themselves, and sources
    under `{out_dir}` are this dataset's own eval splits."""
    kind, _ = source_kind_and_name(n, spec)
    if kind == "task" or "{out_dir}" in json.dumps(spec):
        return
    if kind in ("jsonl", "gsm8k"):
        yield from suite_questions(str(spec[kind]))
    elif kind == "dataset":
        yield from suite_questions(os.path.join(str(spec["dataset"]), "jsonl", f"{spec.get('split', 'test')}.jsonl"))
    elif kind == "file":  # read as eval reads it: the records importer with the source's columns
        try:
            records = records_task(str(spec["file"]), spec).load()[0]
        except ValueError as e:
            raise DataError(f"{path}: sources[{n}]: {e}") from None
        for ex in records:
            yield ex.question, f"{spec['file']}:{ex.meta['line']}"
    elif kind == "reasoning_gym":
        if importlib.util.find_spec("reasoning_gym") is None:  # optional extra, as in eval
            print(f"warning: {path}: reasoning_gym not installed; not decontaminating against "
                  f"{spec['reasoning_gym']} (pip install 'reasonlm[gym]')")
            return
        for seed in seeds:
            task = get_task("reasoning_gym", name=spec["reasoning_gym"], size=spec.get("size", 50),
                            seed=seed, config=spec.get("config"))
            for i, ex in enumerate(task.load()[0]):
                yield ex.question, f"{path}:{spec['reasoning_gym']}/seed{seed}/{i}"
    else:
        raise DataError(f"{path}: sources[{n}]: no decontamination rule for source kind {kind!r}")



def suite_questions(path: str):
    """(question, 'file:line') of every question in an eval file; (None, 'file:line') for a line that
    is not JSON. Files: JSONL/JSON (a question-like field, or a chat's user turns), parquet, plain
    text (one question per line), or an eval suite YAML (eval/*.yaml: the files its jsonl/gsm8k/
    dataset sources read, and its reasoning_gym draws; `task` sources are drawn fresh at eval time
    and exclude the training data themselves, `{out_dir}` ones are this dataset's own eval splits).
    A directory: every such file beneath it, except .json (eval reports live there)."""
    if os.path.isdir(path):
        for root, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            for name in sorted(files):
                if name.endswith((".jsonl", ".parquet", ".txt", ".yaml", ".yml")):
                    yield from suite_questions(os.path.join(root, name))
        return
    if not os.path.isfile(path):
        raise DataError(f"{path} does not exist")

    def from_record(rec):
        if isinstance(rec, str):
            return [rec]
        if isinstance(rec, dict):
            for k in QUESTION_KEYS:
                if isinstance(rec.get(k), str):
                    return [rec[k]]
            for k in ("messages", "prompt"):
                if isinstance(rec.get(k), list):
                    return [m["content"] for m in rec[k] if isinstance(m, dict) and m.get("role") == "user"
                            and isinstance(m.get("content"), str)]
        return []

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # heavy, and generation workers import this module: only parquet suites pay
        for i, rec in enumerate(pq.read_table(path).to_pylist(), 1):
            for q in from_record(rec):
                yield q, f"{path}:{i}"
    elif path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for i, rec in enumerate(data if isinstance(data, list) else data.get("data", []), 1):
            for q in from_record(rec):
                yield q, f"{path}:{i}"
    elif path.endswith(".jsonl"):
        for i, line in text_lines(path):  # bytes that are not UTF-8: one error naming path:line
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # suites may hold broken records on purpose
                    yield None, f"{path}:{i}"
                    continue
                for q in from_record(rec):
                    yield q, f"{path}:{i}"
    elif path.endswith((".yaml", ".yml")):
        suite = load_suite(path)
        for n, spec in enumerate(suite.sources):
            yield from source_questions(n, spec, suite.seeds, path)
    elif path.endswith(".txt"):
        for i, line in text_lines(path):
            if line.strip():
                yield line.strip(), f"{path}:{i}"
    else:
        raise DataError(f"{path}: expected .jsonl, .json, .parquet, .txt, an eval suite .yaml or a directory")


