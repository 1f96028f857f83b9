"""Records importer: your own problems, from a table of questions and answers.

A local JSONL, CSV or parquet file, or a Hub dataset id (`datasets.load_dataset`), with a column
mapping; the data stage and eval read it the same way:

    data.tasks:   [{name: records, args: {path: mine.csv, columns: {question: prompt, answer: target}}}]
    eval suite:   sources: [{file: mine.csv, columns: {question: prompt, answer: target}}]

`columns` maps each field to the column that holds it (without `columns`, every field is read
from the column of its own name when there is one):

    question   what the model is asked (required)
    answer     the final answer (required unless `solution` gives it)
    steps      the worked steps: a list of strings, or one string with a step per line
    solution   a worked solution as text: its lines are the steps; the answer is what follows
               '####', else the last number of its last line (a last line without a number is
               the answer itself, not a step). GSM8K's `answer` column is one (map
               `solution: answer`): its <<a*b=c>> calculator annotations are rewritten as the
               gsm8k importer does (tasks/gsm8k.py `convert_lines`)
    n_steps    how many steps the problem needs (the report's by-steps rows); default: the
               number of steps, 0 (unknown) for an answer-only row
    id         a stable id; default: line<N> (the record's line or row number, from 1)

A numeric answer is written canonically ('$1,200' -> '1200'); any other answer is kept as text.

Answer-only rows (no steps, no solution) are normal: most benchmarks have none. Such a row is
scored on its answer alone: its Check says `steps_checkable=False`, and the eval report leaves
step metrics out for it rather than counting them as 0. A row with steps is checked as GSM8K
solutions are (`check_equation_steps`): every equation written in a step must be true, the last
one's result must be the final answer; a step with no equation in it is prose and passes. The
checker is only trusted where it accepts the row's own gold steps, so a row whose gold steps it
rejects is dropped (`bad_annotation`), and a row without steps gets no step verdicts at all.

Rejected and counted: `malformed` (bad JSON, a missing or empty question or answer, a mapped
column the record lacks, a bad n_steps; a mapped column the first record lacks is a ValueError: the
map is wrong), `bad_annotation` (gold steps the checker rejects),
`final_mismatch` (a solution's '####' answer differs from its last annotation's result).
`on_error="raise"` turns a malformed record into a ValueError naming file:line.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence

from reasonlm.answer import answers_match, format_number, last_number, normalize_number
from reasonlm.example import Example, check_unicode, text_lines
from reasonlm.tasks.base import Check, Importer, Rejected, check_on_error, new_load_report
from reasonlm.tasks.gsm8k import check_equation_steps, convert_lines

FIELDS = ("question", "answer", "steps", "solution", "n_steps", "id")
LOCAL_SUFFIXES = (".jsonl", ".csv", ".parquet")


class Records(Importer):
    name = "records"
    license = "the data's own (records are read from a file or Hub dataset you name)"

    def __init__(self, path: str = "", columns: dict | None = None, config: str | None = None,
                 split: str = "train", on_error: str = "skip"):
        # path may be empty: eval builds the checker of a dataset's `records` rows with no knobs
        if not isinstance(path, str):
            raise ValueError(f"path must be a .jsonl/.csv/.parquet file or a Hub dataset id, got {path!r}")
        self.path, self.config, self.split = path, config, split
        self.columns = check_columns(columns)
        self.on_error = check_on_error(on_error)

    # --- loading ---------------------------------------------------------------------------
    def load(self) -> tuple[list[Example], dict]:
        """(examples, report). The report counts what was read, kept and rejected by reason."""
        if not self.path:
            raise ValueError("records needs a path: a .jsonl/.csv/.parquet file or a Hub dataset id")
        report = new_load_report()
        examples = []
        for line, record, error in self._records():
            report["read"] += 1
            if report["read"] == 1 and record is not None and self.columns:  # a wrong map, not a bad record
                missing = [c for c in self.columns.values() if c not in record]
                if missing:
                    raise ValueError(f"{self.path}: no column {', '.join(map(repr, missing))} in its first record "
                                     f"(it has: {', '.join(map(str, record))}); check `columns`")
            try:
                if error:
                    raise Rejected("malformed", error)
                examples.append(to_example(record, self.columns, self.path, line))
            except Rejected as r:
                if r.kind == "malformed" and self.on_error == "raise":
                    raise ValueError(f"{self.path}:{line}: malformed record: {r.why}") from None
                report["rejected"][r.kind] += 1
        if not report["read"]:  # an empty file would silently make an empty split
            raise ValueError(f"{self.path}: no records in it (an empty file, or a header without rows)")
        report["kept"] = len(examples)
        report["answer_only"] = sum(1 for ex in examples if not ex.steps)
        return examples, report

    def _records(self):
        """(line or row number, record or None, error or None) from a local file or the Hub."""
        path = self.path
        if os.path.isfile(path):
            if path.endswith(".parquet"):
                import pyarrow.parquet as pq  # heavy, and only parquet files need it
                for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
                    yield i, row, None
            elif path.endswith(".csv"):
                yield from csv_records(path)
            elif path.endswith(".jsonl"):
                for i, text in text_lines(path):  # not UTF-8: one line naming the file and line
                    if not text.strip():
                        continue
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError as e:
                        yield i, None, f"not valid JSON ({e.msg} at column {e.colno})"
                        continue
                    check_unicode(record, f"{path}:{i}")
                    yield (i, record, None) if isinstance(record, dict) else (i, None, "not a JSON object")
            else:
                raise ValueError(f"{path}: expected a .jsonl, .csv or .parquet file (or a Hub dataset id)")
            return
        if path.endswith(LOCAL_SUFFIXES) or path.startswith(("/", ".", "~")) or os.path.isdir(path):
            raise ValueError(f"{path}: no such file (expected a .jsonl, .csv or .parquet file, or a Hub dataset id)")
        for i, row in enumerate(load_hub_rows(path, self.config, self.split), 1):
            yield i, row, None

    # --- checking --------------------------------------------------------------------------
    def check(self, example: Example, steps: Sequence[str], answer: str | None) -> Check:
        if not example.steps:  # answer-only: no gold steps the checker was shown to read
            return Check(answers_match(answer, example.answer), steps_checkable=False)
        return check_equation_steps(example, steps, answer)

    def gold_free(self, example: Example) -> str:
        """Rows with worked steps are calculator-checked; answer-only rows have nothing to check."""
        return "calculator" if example.steps else "answer"


# Longest CSV cell read, in characters. csv's own limit (131,072) stopped a long question with a
# traceback; a cell past this one is a line naming the file and line.
CSV_FIELD_LIMIT = 1 << 24


def csv_records(path: str):
    """(line, row, None) of a CSV file with a header row. A row's line number is the header's 1
    plus its index (quoted newlines aside); an unreadable row is one ValueError naming the file
    and the line where reading stopped."""
    at = [0]  # the line read last: where an error is

    def lines():
        for at[0], line in text_lines(path):  # not UTF-8: text_lines names the line
            yield line

    reader = csv.DictReader(lines())
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        header = reader.fieldnames or []
        twice = next((name for k, name in enumerate(header) if name in header[:k]), None)
        if twice is not None:
            raise ValueError(f"{path}:1: column {twice!r} appears twice in the header (a row would keep only "
                             f"the last one's value)")
        for i, row in enumerate(reader, 2):
            yield i, row, None
    except csv.Error as e:
        why = (f"a cell longer than {CSV_FIELD_LIMIT:,} characters" if "field larger than field limit" in str(e)
               else f"not valid CSV ({e})")
        raise ValueError(f"{path}:{at[0]}: {why}") from None
    finally:
        csv.field_size_limit(previous)


def check_columns(columns) -> dict | None:
    """The column mapping, checked: None (read each field from its own column) or {field: column}."""
    if columns is None:
        return None
    if not isinstance(columns, dict) or not all(isinstance(v, str) and v for v in columns.values()):
        raise ValueError(f"columns must map fields to column names, e.g. {{question: q, answer: a}}, got {columns!r}")
    unknown = set(columns) - set(FIELDS)
    if unknown:
        raise ValueError(f"columns: unknown field(s) {sorted(unknown)}; fields: {', '.join(FIELDS)}")
    if "question" not in columns or not ({"answer", "solution"} & set(columns)):
        raise ValueError(f"columns must name `question` and `answer` (or `solution`), got {columns!r}")
    return dict(columns)


def load_hub_rows(path: str, config: str | None, split: str):
    """Rows of a Hub dataset; any failure to get them is one clear line (as for models)."""
    try:
        import datasets  # heavy (pyarrow, pandas), and only Hub ids need it
        rows = datasets.load_dataset(path, config, split=split)
    except Exception as e:  # offline, no network, unknown id/config/split: all end the same way
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise ValueError(f"dataset {path!r} (config {config!r}, split {split!r}) is neither a local file nor "
                         f"reachable on the Hub{' (HF_HUB_OFFLINE=1 is set)' if offline else ''}: {first}; "
                         "pass a local .jsonl/.csv/.parquet file instead") from None
    yield from rows


def to_example(record: dict, columns: dict | None, source: str, line: int) -> Example:
    """One record -> Example; raises Rejected(kind, why)."""
    fields = read_fields(record, columns)
    question = fields.get("question")
    if not isinstance(question, str) or not question.strip():
        raise Rejected("malformed", "missing or empty question")
    answer = None if fields.get("answer") is None else str(fields["answer"]).strip()
    steps = split_steps(fields.get("steps"))
    if fields.get("solution") is not None:
        steps, from_solution = read_solution(str(fields["solution"]))
        answer = answer or from_solution
    if not answer:
        raise Rejected("malformed", "missing or empty answer")
    value = normalize_number(answer)
    answer = format_number(value) if value is not None else answer
    n_steps = read_n_steps(fields.get("n_steps"), len(steps))
    example = Example(question.strip(), answer, tuple(steps), n_steps, Records.name,
                      id=str(fields.get("id") or f"line{line}"), meta={"source": source, "line": line})
    if steps and not check_equation_steps(example, steps, answer).chain_valid:
        raise Rejected("bad_annotation", "the gold steps do not pass the checker (a false equation, or the last "
                                         "one's result is not the answer)")
    return example


def read_fields(record: dict, columns: dict | None) -> dict:
    """{field: value} of a record: mapped columns must be there; unmapped fields are read when present."""
    if columns is None:
        return {f: record[f] for f in FIELDS if record.get(f) not in (None, "")}
    missing = [c for c in columns.values() if c not in record]
    if missing:
        raise Rejected("malformed", f"no column {', '.join(map(repr, missing))} (has: {', '.join(map(str, record))})")
    return {f: record[c] for f, c in columns.items() if record[c] not in (None, "")}


def split_steps(steps) -> list[str]:
    """Steps from a list of strings or from one string with a step per line (a completion holds one
    step per line, so a list entry spanning lines is as many steps)."""
    if steps is None:
        return []
    if isinstance(steps, str):
        steps = [steps]
    if not isinstance(steps, (list, tuple)):
        raise Rejected("malformed", f"steps must be a list of strings or a string, got {type(steps).__name__}")
    return [line.strip() for s in steps for line in str(s).splitlines() if line.strip()]


def read_solution(text: str) -> tuple[list[str], str | None]:
    """(steps, answer) of a worked solution: the answer follows '####', else it is the last
    number of the last line; annotations are rewritten (tasks/gsm8k.py)."""
    body, mark, final = text.rpartition("####")
    if not mark:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            return [], None
        final = last_number(lines[-1])
        body = "\n".join(lines if final is not None else lines[:-1])
        final = final if final is not None else lines[-1]
    steps, _, last = convert_lines(body)
    final = final.strip()
    if mark and last is not None and normalize_number(final) != last:
        raise Rejected("final_mismatch", f"'#### {final}' but the last annotation gives {format_number(last)}")
    return steps, final or None


def read_n_steps(value, default: int) -> int:
    if value is None:
        return default
    try:
        n = int(str(value).strip())
    except ValueError:
        raise Rejected("malformed", f"n_steps must be a whole number, got {value!r}") from None
    if n < 0:
        raise Rejected("malformed", f"n_steps must be >= 0, got {n}")
    return n
