"""The sharded writer: one split's Examples to disk as they arrive, with their statistics.

Each split is written as arrow shards (`datasets.load_from_disk` layout), parquet shards (the
Hub's files) and three JSONL views: the rows, `{"messages": ...}` chat and TRL's prompt/completion,
rendered with answer.prompt_messages and example.render_target, the functions the trainer
tokenises through. At most BATCH_ROWS rows are in memory; a shard closes every `shard_rows` rows.
`SplitStats` counts families, n_steps and lengths on the way (token lengths on an even sample).
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter

from reasonlm.answer import encode_example, prompt_messages
from reasonlm.config import DataConfig
from reasonlm.example import Example, render_target

COLUMNS = ("id", "family", "question", "steps", "answer", "n_steps", "meta")
BATCH_ROWS = 10_000  # rows buffered before they are written as one parquet row group
ARROW_BATCH_ROWS = 1000  # rows per arrow record batch: datasets.config.DEFAULT_MAX_BATCH_SIZE, what save_to_disk writes

# datasets and pyarrow (seconds to import) are imported where files are written, not at the top:
# the generation workers are spawned processes that import this package and never write a file.


class SplitWriter:
    """Writes one split as rows arrive: arrow shards (load_from_disk layout), parquet shards and
    three JSONL views. At most BATCH_ROWS rows are held; a shard closes every `shard_rows` rows."""

    def __init__(self, root: str, split: str, cfg: DataConfig, stats: SplitStats, fingerprint: str):
        import pyarrow as pa  # heavy: see the note at the top
        self.pa, self.root, self.split, self.shard_rows, self.stats = pa, root, split, cfg.shard_rows, stats
        self.fingerprint = fingerprint
        self.features = features()
        self.schema = self.features.arrow_schema  # carries the features as metadata, as datasets writes it
        self.n, self.in_shard, self.shards, self.batch = 0, 0, [], {c: [] for c in COLUMNS}
        self.arrow = self.parquet = None
        os.makedirs(os.path.join(root, split))
        os.makedirs(os.path.join(root, "parquet"), exist_ok=True)
        os.makedirs(os.path.join(root, "jsonl"), exist_ok=True)
        j = os.path.join(root, "jsonl", split)
        self.views = [open(j + suffix, "w", encoding="utf-8")
                      for suffix in (".jsonl", ".chat.jsonl", ".prompt_completion.jsonl")]
        # json.dumps(prompt_messages(q)) is this text around json.dumps(q): encoding one string is
        # much cheaper than a list of dicts (the question is the only part that varies)
        mark = json.dumps("\x00question\x00")
        probe = json.dumps(prompt_messages("\x00question\x00"))
        self.prompt_around = probe.split(mark) if probe.count(mark) == 1 else None

    def add(self, example: Example) -> None:
        row = example.to_row()
        row["id"] = f"{self.split}-{self.n:07d}"  # ids number the split's rows as they are written
        completion = render_target(example, "cot")
        # both views through the one renderer; each half is encoded once and shared by the two lines
        if self.prompt_around:
            before, after = self.prompt_around
            prompt = before + json.dumps(example.question) + after
        else:
            prompt = json.dumps(prompt_messages(example.question))
        reply = '[{"role": "assistant", "content": ' + json.dumps(completion) + '}]'  # json.dumps([{...}])
        rows_view, chat_view, pc_view = self.views
        rows_view.write(json.dumps(row) + "\n")
        chat_view.write(f'{{"messages": {prompt[:-1]}, {reply[1:]}}}\n')  # json.dumps({"messages": p + r})
        pc_view.write(f'{{"prompt": {prompt}, "completion": {reply}}}\n')
        for c in COLUMNS:
            self.batch[c].append(row[c])
        self.stats.add(example, completion)
        self.n += 1
        self.in_shard += 1
        if len(self.batch["id"]) >= BATCH_ROWS:
            self._write_batch()
        if self.in_shard >= self.shard_rows:
            self._close_shard()

    def _write_batch(self) -> None:
        import pyarrow.parquet as pq  # heavy: see the note at the top
        table = self.pa.Table.from_pydict(self.batch, schema=self.schema)
        if self.arrow is None:
            k = len(self.shards)
            self.shards.append(k)
            # An arrow shard of `load_from_disk` is an Arrow IPC stream whose schema carries the
            # features as metadata, in record batches of at most ARROW_BATCH_ROWS rows: written
            # with pyarrow's public stream writer, byte for byte what datasets' own writer gives.
            self.arrow = self.pa.ipc.new_stream(self._arrow_path(k, None), self.schema)
            self.parquet = pq.ParquetWriter(self._parquet_path(k, None), self.schema)
        self.arrow.write_table(table, max_chunksize=ARROW_BATCH_ROWS)
        self.parquet.write_table(table)
        self.batch = {c: [] for c in COLUMNS}

    def _close_shard(self) -> None:
        if self.batch["id"] or self.arrow is None:  # an empty split still gets one (empty) shard
            self._write_batch()
        self.arrow.close()
        self.parquet.close()
        self.arrow = self.parquet = None
        self.in_shard = 0

    def _arrow_path(self, k, n):
        return os.path.join(self.root, self.split, f"data-{k:05d}-of-{n:05d}.arrow" if n else f"data-{k:05d}.part")

    def _parquet_path(self, k, n):
        return os.path.join(self.root, "parquet", f"{self.split}-{k:05d}-of-{n:05d}.parquet" if n else
                            f"{self.split}-{k:05d}.part")

    def close(self, state_template: dict, info_text: str) -> dict:
        if self.in_shard or not self.shards:
            self._close_shard()
        for f in self.views:
            f.close()
        n = len(self.shards)
        for k in self.shards:  # shard names say how many there are, which is known only now
            os.replace(self._arrow_path(k, None), self._arrow_path(k, n))
            os.replace(self._parquet_path(k, None), self._parquet_path(k, n))
        state = {**state_template, "_data_files": [{"filename": f"data-{k:05d}-of-{n:05d}.arrow"} for k in range(n)],
                 "_fingerprint": self.fingerprint}
        with open(os.path.join(self.root, self.split, "state.json"), "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
        with open(os.path.join(self.root, self.split, "dataset_info.json"), "w") as f:
            f.write(info_text)
        return self.stats.summary()


def disk_templates(tmp: str) -> tuple[dict, str]:
    """state.json and dataset_info.json exactly as this `datasets` version writes them, from a
    throw-away save_to_disk; we then list our own shards and a deterministic fingerprint."""
    import datasets  # heavy: see the note at the top
    scratch = os.path.join(tmp, ".work", "template")
    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({c: [] for c in COLUMNS}, features=features()).save_to_disk(scratch)
    if not quiet:
        datasets.enable_progress_bars()
    with open(os.path.join(scratch, "state.json")) as f:
        state = json.load(f)
    with open(os.path.join(scratch, "dataset_info.json")) as f:
        info = f.read()
    shutil.rmtree(scratch)
    return state, info


def features():
    """The columns' types (the Example's fields as a row)."""
    from datasets import Features, Sequence, Value  # heavy: see the note at the top
    return Features({"id": Value("string"), "family": Value("string"), "question": Value("string"),
                     "steps": Sequence(Value("string")), "answer": Value("string"),
                     "n_steps": Value("int32"), "meta": Value("string")})


class SplitStats:
    def __init__(self, tokenizer, stride: int):
        self.tokenizer, self.stride, self.rows = tokenizer, max(1, stride), 0
        self.by_family_steps = Counter()
        self.lengths = {k: Lengths() for k in ("question_chars", "completion_chars", "question_words",
                                               "completion_words", "tokens")}

    def add(self, example: Example, completion: str) -> None:
        q = example.question
        self.by_family_steps[(example.family, example.n_steps)] += 1
        L = self.lengths
        L["question_chars"].add(len(q))
        L["completion_chars"].add(len(completion))
        L["question_words"].add(len(q.split()))
        L["completion_words"].add(len(completion.split()))
        if self.tokenizer is not None and self.rows % self.stride == 0:  # every k-th row: an even sample
            prompt, answer = encode_example(self.tokenizer, q, completion)
            L["tokens"].add(len(prompt) + len(answer))
        self.rows += 1

    def summary(self) -> dict:
        fam, steps = Counter(), Counter()
        for (f, s), c in self.by_family_steps.items():
            fam[f] += c
            steps[s] += c
        return {"rows": self.rows, "by_family": dict(sorted(fam.items())),
                "by_steps": {str(k): v for k, v in sorted(steps.items())},
                "by_family_steps": [[f, s, c] for (f, s), c in sorted(self.by_family_steps.items())],
                "lengths": {k: v.summary() for k, v in self.lengths.items() if v.summary()},
                "token_sample_every": self.stride if self.tokenizer is not None else None}


class Lengths:
    """An exact histogram: min/mean/p50/p95/max of a million lengths in a few KB."""

    def __init__(self):
        self.hist = Counter()

    def add(self, n: int) -> None:
        self.hist[n] += 1

    def summary(self) -> dict | None:
        total = sum(self.hist.values())
        if not total:
            return None
        out = {"min": min(self.hist), "mean": round(sum(k * v for k, v in self.hist.items()) / total, 2),
               "max": max(self.hist)}
        cum, marks = 0, {"p50": 0.5, "p95": 0.95}
        for k in sorted(self.hist):
            cum += self.hist[k]
            for name, q in list(marks.items()):
                if cum >= q * total:  # nearest rank
                    out[name] = k
                    del marks[name]
        return {k: out[k] for k in ("min", "mean", "p50", "p95", "max")}
