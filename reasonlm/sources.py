"""Problem sources: where a suite's problems come from, as lists of Examples.

A suite names its sources (an eval config's `sources`; without them, the recipe's dataset
splits), each one section of the report:

    {dataset: DIR, split: test}              a split written by the data stage
    {jsonl: FILE}                            one {question, answer, [steps, n_steps, family, meta]} per line
    {file: FILE_OR_HUB_ID, columns: {question: q, answer: a}, split: test, config: NAME}
                                             your own JSONL/CSV/parquet file or Hub dataset, read by
                                             column (the `records` importer, tasks/records.py)
    {task: arithmetic, args: {...}, steps: [lo, hi], n_per_steps: 20}   freshly generated, checker-verified
    {gsm8k: FILE}                            a GSM8K-format file (lm-evaluation-harness scoring too)
    {reasoning_gym: NAME, size: 50}          a reasoning-gym task (optional extra)

Any source may also say `name`, `max_problems`, `lmeval` and `exclude_from: DATASET_DIR` (drop
problems whose question is in that dataset's training splits). `load_sources` checks every
source before anything is generated; a bad one is a one-line SourceError naming it. Paths may
use `{out_dir}`, the recipe's output folder.

Only the functions under "the task API" call task families (the protocol: reasonlm/tasks/base.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import random
import sys
from dataclasses import dataclass, field

from reasonlm.answer import normalize_number
from reasonlm.config import EvalConfig
from reasonlm.example import Example, ExampleError, check_unicode, question_key, read_dataset, text_lines
from reasonlm.tasks import get_task
from reasonlm.tasks.base import Rejected, Task, is_importer
from reasonlm.tasks.records import read_n_steps
from reasonlm.verdict import check_solution

SOURCE_KINDS = ("dataset", "jsonl", "task", "gsm8k", "reasoning_gym", "file")
SOURCE_OPTIONS = {"name", "split", "args", "steps", "n_per_steps", "size", "config", "max_problems",
                  "exclude_from", "lmeval", "columns"}
TRAINING_SPLITS = ("base", "train", "validation")


class SourceError(ValueError):
    """A source that cannot be evaluated, as one line naming it."""


@dataclass
class Source:
    """One source of problems: a section of the report."""
    name: str
    kind: str
    examples: list[Example]
    exemplars: list[Example] = field(default_factory=list)
    task: object = None  # checker for every example; None = the task family named by each example
    lmeval: bool = False  # also score lm-evaluation-harness's gsm8k extraction
    info: dict = field(default_factory=dict)


def load_sources(cfg: EvalConfig, out_dir: str | None = None) -> tuple[list[Source], dict[str, str]]:
    """Every source's problems and exemplars, checked before anything is generated.

    Returns (sources, skipped) where skipped maps a source name to why it was left out (an
    optional dependency that is not installed). Bad sources raise SourceError naming the source.
    """
    specs = cfg.sources or default_sources(cfg, out_dir)
    sources, skipped, names = [], {}, set()
    for n, spec in enumerate(specs):
        kind, name = source_kind_and_name(n, spec)
        if name in names:
            raise SourceError(f"sources[{n}]: two sources are named {name!r}; give one a `name`")
        names.add(name)
        try:
            source = _load_source(kind, name, spec, cfg, out_dir)
            cap = int(spec.get("max_problems", cfg.max_problems) or 0)
        except SourceError:
            raise
        except (ValueError, TypeError, KeyError) as e:  # bad settings or records, as one line
            raise SourceError(f"source {name!r}: {type(e).__name__ + ': ' if not isinstance(e, ValueError) else ''}"
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None
        if source is None:
            skipped[name] = "reasoning-gym is not installed (pip install 'reasonlm[gym]')"
            continue
        if cap:
            source.examples = source.examples[:cap]
        _check_source(source, cfg)
        source.info["problems"] = len(source.examples)
        source.info["fingerprint"] = fingerprint([source])
        sources.append(source)
    for name, why in skipped.items():
        print(f"warning: skipped source {name!r}: {why}", file=sys.stderr)
    if not sources:
        raise SourceError("no source could be evaluated" + (f" (skipped: {'; '.join(skipped.values())})" if skipped else ""))
    return sources, skipped


def default_sources(cfg: EvalConfig, out_dir: str | None) -> list[dict]:
    """No `sources`: the recipe's dataset splits, each a section named after its split."""
    data_dir = cfg.data or (os.path.join(out_dir, "data") if out_dir else "")
    if not data_dir:
        raise SourceError("nothing to evaluate: name `sources` in the suite, or `data`")
    return [{"dataset": data_dir, "split": s, "name": s} for s in cfg.splits]


def source_kind_and_name(n: int, spec) -> tuple[str, str]:
    """(kind, name) of the n-th source spec of a suite; a malformed spec is one SourceError."""
    if not isinstance(spec, dict):
        raise SourceError(f"sources[{n}]: expected a mapping like {{task: arithmetic}}, got {spec!r}")
    kinds = [k for k in SOURCE_KINDS if k in spec]
    if len(kinds) != 1:
        raise SourceError(f"sources[{n}]: name exactly one of {', '.join(SOURCE_KINDS)}, got {sorted(spec)}")
    unknown = set(spec) - SOURCE_OPTIONS - set(SOURCE_KINDS)
    if unknown:
        raise SourceError(f"sources[{n}]: unknown key(s) {sorted(unknown)}; valid: "
                          f"{', '.join(sorted(SOURCE_OPTIONS | set(SOURCE_KINDS)))}")
    kind = kinds[0]
    name = str(spec.get("name") or (spec.get("split") if kind == "dataset" else None)
               or os.path.splitext(os.path.basename(str(spec[kind])))[0])
    if "/" in name:
        raise SourceError(f"sources[{n}]: a source name cannot contain '/', got {name!r}")
    return kind, name


def _check_source(source: Source, cfg: EvalConfig) -> None:
    if not source.examples:
        raise SourceError(f"source {source.name!r} has no problems to evaluate ({source.info.get('from', source.kind)})")
    if cfg.shots and len(source.exemplars) < cfg.shots:
        raise SourceError(f"source {source.name!r}: shots={cfg.shots} but only {len(source.exemplars)} exemplars "
                          "are available")
    if source.task is None:
        for family in sorted({ex.family for ex in source.examples}):
            try:
                task_for(family)
            except ValueError as e:
                raise SourceError(f"source {source.name!r}: {e}") from None


def _load_source(kind: str, name: str, spec: dict, cfg: EvalConfig, out_dir: str | None) -> Source | None:
    shots = cfg.shots
    exclude = training_questions(resolve_path(spec["exclude_from"], out_dir)) if spec.get("exclude_from") else set()
    info: dict = {"kind": kind}
    source = Source(name, kind, [], lmeval=bool(spec.get("lmeval", kind == "gsm8k")), info=info)
    if kind == "dataset":
        path, split = resolve_path(str(spec["dataset"]), out_dir), str(spec.get("split", "test"))
        dd = read_dataset(path)
        if split not in dd:
            raise SourceError(f"source {name!r}: split {split!r} not in {path} (has: {', '.join(dd)})")
        info["from"] = f"{path} split {split}"
        examples = [Example.from_row(r, f"{split}-{i:07d}", "arithmetic") for i, r in enumerate(dd[split])]
        if shots and "train" in dd and split != "train":  # exemplars from training problems
            taken = {question_key(ex.question) for ex in examples}
            candidates = dd["train"].select(range(min(len(dd["train"]), 4 * shots + 16)))
            source.exemplars = [Example.from_row(r) for r in candidates if question_key(r["question"]) not in taken][:shots]
            shots = 0
    elif kind == "jsonl":
        path = resolve_path(str(spec["jsonl"]), out_dir)
        info["from"] = path
        examples = [jsonl_example(path, line, r, f"{name}-{i:07d}") for i, (line, r) in enumerate(_read_jsonl(path))]
    elif kind == "task":
        task = get_task(str(spec["task"]), **(spec.get("args") or {}))
        bounds, per = spec.get("steps", [1, 4]), spec.get("n_per_steps", 20)
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int) for b in bounds)
                and 1 <= bounds[0] <= bounds[1] and isinstance(per, int) and per >= 1):
            raise SourceError(f"source {name!r}: needs steps: [lo, hi] with 1 <= lo <= hi and n_per_steps >= 1, "
                              f"got steps {bounds!r}, n_per_steps {per!r}")
        steps = list(range(bounds[0], bounds[1] + 1))
        info["from"] = f"task {spec['task']} {json.dumps(spec.get('args') or {})} steps {bounds}, seeds {cfg.seeds}"
        examples, taken = [], set(exclude)
        for seed in cfg.seeds:
            examples += distinct_examples(task, f"{name}-s{seed}", random.Random(seed),
                                          [k for k in steps for _ in range(per)], taken)
        if shots:  # exemplars: a separate draw, distinct from every evaluated problem
            source.exemplars = distinct_examples(task, f"{name}-shot", random.Random(10**6 + cfg.seeds[0]),
                                                 [steps[i % len(steps)] for i in range(shots)], taken)
            shots = 0
        source.task = task
    elif kind == "gsm8k":
        path = resolve_path(str(spec["gsm8k"]), out_dir)
        if not os.path.isfile(path):
            raise SourceError(f"source {name!r}: GSM8K-format file not found: {path}" + (
                " (write it with: python -c \"from reasonlm.tasks.gsm8k import write_fixture; "
                f"write_fixture('{path}')\")" if "fixtures" in path else ""))
        source.task, examples, info["load"] = load_gsm8k(path)
        info["from"] = path
    elif kind == "file":
        path = resolve_path(str(spec["file"]), out_dir)
        source.task, examples, info["load"] = load_records(path, spec)
        info["from"] = path + (f" split {spec.get('split', 'test')}" if not os.path.isfile(path) else "")
    else:  # reasoning_gym: an optional extra
        if importlib.util.find_spec("reasoning_gym") is None:
            return None
        source.task, examples, loads = load_reasoning_gym(name, spec, cfg.seeds)
        info.update({"from": f"reasoning_gym {spec['reasoning_gym']} size {spec.get('size', 50)} seeds {cfg.seeds}",
                     "load": loads})
    if exclude:
        before = len(examples)
        examples = [ex for ex in examples if question_key(ex.question) not in exclude]
        info["decontaminated"] = before - len(examples)
    if shots:  # exemplars from the source itself: its first problems, then not evaluated
        source.exemplars, examples = examples[:shots], examples[shots:]
    seen = set()
    for ex in examples:
        if ex.id in seen:
            raise SourceError(f"source {name!r}: problem id {ex.id!r} appears twice")
        seen.add(ex.id)
    source.examples = examples
    return source


def resolve_path(path: str, out_dir: str | None) -> str:
    """A source path with `{out_dir}` filled in by the recipe's output folder."""
    if "{out_dir}" in path:
        if not out_dir:
            raise SourceError(f"path {path!r} uses {{out_dir}}: pass --recipe RECIPE (whose out_dir fills it)")
        path = path.replace("{out_dir}", out_dir)
    return path


def training_questions(path: str) -> set[str]:
    """Question keys of every training split of the dataset at `path` (for `exclude_from`)."""
    dd = read_dataset(path)
    return {question_key(r["question"]) for s in TRAINING_SPLITS if s in dd for r in dd[s]}


def distinct_examples(task, prefix: str, rng: random.Random, targets: list[int], taken: set) -> list[Example]:
    """One distinct, checker-verified problem per n_steps in `targets`; `taken` (question keys) is
    avoided and extended."""
    examples, misses = [], 0
    for n_steps in targets:
        while True:
            example = new_problem(task, rng, n_steps, f"{prefix}-{len(examples):05d}")
            key = question_key(example.question)
            if key not in taken:
                break
            misses += 1
            if misses > 50 * len(targets) + 1000:
                raise SourceError(f"{prefix}: too few distinct {n_steps}-step {task.name} problems (after excluding "
                                  f"{len(taken)}); lower n_per_steps or widen the task's args")
        if not check_solution(task, example, list(example.steps), example.answer).chain_valid:
            raise SourceError(f"task {task.name} produced a gold solution its own checker rejects: "
                              f"{example.question!r}")
        taken.add(key)
        examples.append(example)
    return examples


def _read_jsonl(path: str) -> list[tuple[int, dict]]:
    """(line number, record) of every problem in a JSONL file."""
    if not os.path.isfile(path):
        raise SourceError(f"file not found: {path}")
    records = []
    try:
        for i, line in text_lines(path):
            if line.strip():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SourceError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                if not isinstance(r, dict) or "question" not in r or "answer" not in r:
                    raise SourceError(f"{path}:{i}: a problem needs 'question' and 'answer'")
                check_unicode(r, f"{path}:{i}")
                records.append((i, r))
    except ExampleError as e:  # not UTF-8: the message names the file and line
        raise SourceError(str(e)) from None
    return records


def jsonl_example(path: str, line: int, record: dict, default_id: str) -> Example:
    """The Example of one JSONL record, whose question must be text and whose gold answer must be
    an answer: a number, or text where the family answers with text (a gold answer that is not
    one would score every model 0 without a word)."""
    where = f"{path}:{line}"
    question, answer = record["question"], record["answer"]
    if not isinstance(question, str) or not question.strip():
        raise SourceError(f"{where}: the question must be non-empty text, got {json.dumps(question)[:60]}")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
        raise SourceError(f"{where}: the gold answer must be a number or text, got {json.dumps(answer)[:60]}")
    try:
        if record.get("n_steps") is not None:  # the records importer's rule (file: sources)
            record = {**record, "n_steps": read_n_steps(record["n_steps"], 0)}
        example = Example.from_row({**record, "answer": str(answer).strip()}, default_id, "arithmetic")
        task = task_for(example.family)
    except Rejected as e:
        raise SourceError(f"{where}: {e.why}") from None
    except ValueError as e:
        raise SourceError(f"{where}: {e}") from None
    if answers_with_numbers(task) and normalize_number(example.answer) is None:
        shown = example.answer if len(example.answer) <= 60 else f"{example.answer[:40]}...({len(example.answer):,} characters)"
        raise SourceError(f"{where}: the gold answer {shown!r} is not a number, and "
                          f"{example.family} answers are numbers")
    return example


def fingerprint(sources: list[Source]) -> str:
    """Identity of the evaluated problems: source names, ids, questions and gold answers."""
    h = hashlib.sha256()
    for source in sources:
        h.update(source.name.encode() + b"\0")
        for ex in source.examples:
            h.update(f"{ex.id}\0{ex.question}\0{ex.answer}\n".encode())
    return h.hexdigest()[:16]


# --- the task API: the only lines that call task families ------------------------------------
_TASKS: dict = {}
_NUMERIC: dict = {}  # family name -> whether its answers are numbers


def task_for(family: str):
    """The checker of a task family (with its default knobs), built once."""
    name = family or "arithmetic"
    if name not in _TASKS:
        _TASKS[name] = get_task(name)
    return _TASKS[name]


def answers_with_numbers(task: Task) -> bool:
    """Whether a family's gold answers are numbers: what its own problems answer with (an
    importer's records are checked by its own loader; GSM8K's answers are numbers)."""
    if is_importer(task):
        return task.name == "gsm8k"
    if task.name not in _NUMERIC:
        _NUMERIC[task.name] = normalize_number(task.generate(random.Random(0), 1).answer) is not None
    return _NUMERIC[task.name]


def new_problem(task: Task, rng: random.Random, n_steps: int, problem_id: str) -> Example:
    """A fresh problem of a generated family with n_steps steps, with its id (eval's generated
    sources, RL's problems, the ladders)."""
    if is_importer(task):
        raise SourceError(f"task {task.name!r} is an importer: name it as a `{task.name}:` source, not `task:`")
    return dataclasses.replace(task.generate(rng, n_steps), id=problem_id)


def ladder_problems(task: Task, lengths, n: int, seed: int, prefix: str) -> list[Example]:
    """`n` fresh problems of every length in `lengths`, length k drawn from Random(seed + k) with
    ids '<prefix>-<k>-<i>': a fixed held-out ladder (RL's probe set, eval/bench_rl.py's ladder).
    The pipeline's ladder is an eval source instead (`{task: ..., steps: ...}`: distinct problems,
    none of them a training question)."""
    out = []
    for n_steps in lengths:
        rng = random.Random(seed + n_steps)
        out += [new_problem(task, rng, n_steps, f"{prefix}-{n_steps}-{i}") for i in range(n)]
    return out


def load_gsm8k(path: str) -> tuple[object, list[Example], dict]:
    """(task, examples, load report) of a GSM8K-format file; ids are `line<N>`."""
    task = get_task("gsm8k", path=path)
    records, load_report = task.load()
    examples = [dataclasses.replace(r, id=f"line{r.meta.get('line', i)}") for i, r in enumerate(records)]
    return task, examples, load_report


def load_records(path: str, spec: dict) -> tuple[object, list[Example], dict]:
    """(task, examples, load report) of a `file` source: the records importer with the source's
    `columns` (and `split`, default test, and `config` for a Hub dataset)."""
    task = records_task(path, spec)
    examples, load_report = task.load()
    return task, examples, load_report


def records_task(path: str, spec: dict) -> Task:
    """The records importer of a `file` source (decontamination reads it the same way)."""
    config = spec.get("config")
    if config is not None and not isinstance(config, str):
        raise ValueError(f"config must be a Hub dataset config name, got {config!r}")
    return get_task("records", path=path, columns=spec.get("columns"), config=config,
                    split=str(spec.get("split", "test")))


def load_reasoning_gym(name: str, spec: dict, seeds: list[int]) -> tuple[object, list[Example], dict]:
    """(task of the last seed, examples of every seed, load report per seed) of a reasoning-gym source."""
    examples, loads, task = [], {}, None
    for seed in seeds:
        task = get_task("reasoning_gym", name=str(spec["reasoning_gym"]), size=spec.get("size", 50), seed=seed,
                        config=spec.get("config") or None)
        records, loads[str(seed)] = task.load()
        examples += [dataclasses.replace(r, id=f"{name}-s{seed}-{i:05d}") for i, r in enumerate(records)]
    return task, examples, loads
