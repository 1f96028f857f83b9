"""Data stage: mix task families and imported datasets into verified step-by-step problems.

    reasonlm data data/mix-reasoning.yaml          -> <out_dir>/data/
    reasonlm data recipes/tiny-cpu.yaml            (any recipe: only its `out_dir` and `data:` are used)
    print_stats("out/mix-reasoning/data")          (`reasonlm data --stats PATH`)

Sources (`data.tasks`, read top to bottom in `make_sources`):
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
with an imported eval split or a suite (see Blocklist for why not with generated splits).
Generated rejects are replaced by fresh draws of the same family; imported ones are dropped.
What was removed (counts and examples) is in decontamination.json and the card.

Output (<out_dir>/data/, built in data.tmp/ and renamed, so a failed or interrupted build never
leaves a partial dataset under the final name):
  dataset_dict.json, <split>/data-*.arrow   `datasets.load_from_disk` layout (typed features)
  parquet/<split>-*.parquet                 the same rows for the Hub (the card's `configs:`)
  jsonl/<split>.jsonl                       the same rows as JSON lines
  jsonl/<split>.chat.jsonl                  {"messages": [...]}: prompt + gold completion
  jsonl/<split>.prompt_completion.jsonl     {"prompt": [...], "completion": [...]} (TRL's format)
  README.md, stats.json, decontamination.json, config.yaml

The chat and prompt/completion views are rendered with answer.prompt_messages and
answer.render_completion, the same functions the trainer tokenises through.

Scale and determinism: rows stream to disk in shards (`shard_rows`) as they are generated, so
memory does not grow with the count. Problems are made in jobs of JOB_ROWS, each with its own
seed (seed/split/job); worker processes run jobs and the results are consumed in job order, so
the same recipe gives byte-identical files for any number of workers.
"""
from __future__ import annotations

import hashlib
import inspect
import importlib.util
import json
import os
import random
import re
import shutil
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass

import reasonlm
from reasonlm.answer import encode_example, prompt_messages, render_completion
from reasonlm.config import DataConfig, save_resolved
from reasonlm.tasks import get_task

EVAL_SPLITS = ("validation", "test", "test_ood")
SPLITS = ("base", "train", *EVAL_SPLITS)
COLUMNS = ("id", "family", "question", "steps", "answer", "n_steps", "meta")
GENERATOR_VERSION = "3"  # bump whenever the same recipe and seed would produce different problems
JOB_ROWS = 2000  # problems per generation job (a job has its own seed); part of the generator version
BATCH_ROWS = 10_000  # rows buffered before they are written as one arrow record batch / parquet row group
MAX_TRIES = 2000  # draws for one problem before we conclude the recipe's space is exhausted
TOKEN_SAMPLE = 20_000  # rows per split that are tokenized for the token-length statistics
EXAMPLES_KEPT = 10  # removed questions quoted in decontamination.json
BOILERPLATE = 3  # an n-gram in this many eval questions is template text, not one question's content
PARALLEL_MIN_ROWS = 20_000  # below this, starting worker processes costs more than it saves
DEDUP_MODES = ("none", "exact", "normalized")


class DataError(ValueError):
    """A data problem reported as one line."""


# --- keys: what counts as the same question ---------------------------------------------------
NOT_MATH_RE = re.compile(r"[^\w+\-*/=.() ]")  # punctuation other than arithmetic: folded to a space
SENTENCE_DOT_RE = re.compile(r"\.(?!\d)|(?<!\d)\.")  # a dot that is not a decimal point
MATH_SPACE_RE = re.compile(r"\s*([+\-*/=()])\s*")  # '3 + 4' is '3+4'
SPACES_RE = re.compile(r"\s+")
PLAIN_MATH = "0123456789+-*/()"  # a question of only these characters is already normalized


def normalize_question(q: str) -> str:
    """Key for de-duplication and decontamination: case, spacing and punctuation folded."""
    if not q.strip(PLAIN_MATH):  # '(7+5)*3-4': nothing to fold, it is its own key
        return q
    return fold_question(q)


def fold_question(q: str) -> str:
    """normalize_question without its short cut (the rules themselves)."""
    q = SENTENCE_DOT_RE.sub(" ", NOT_MATH_RE.sub(" ", q.casefold()))
    return SPACES_RE.sub(" ", MATH_SPACE_RE.sub(r"\1", q)).strip()


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
    eval suites): two draws of one template share its wording, which is not leakage. Measured on
    a four-family mix with n=8 against 240 generated eval questions, n-grams of the generated
    splits rejected ~30% of all draws and most short object-swap and word problems. Generated eval
    splits are matched by exact normalized question. For the same reason an n-gram found in
    BOILERPLATE or more eval questions is an instruction or a template ('State the final answer
    to the following arithmetic problem'), not a question's content, and is dropped.
    """

    def __init__(self, n: int):
        self.n, self.exact, self.grams, self.counts, self.boilerplate = n, {}, {}, Counter(), 0

    def add(self, question: str, where: str, group: str, grams: bool = True) -> None:
        self.exact.setdefault(normalize_question(question), where)
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


# --- sources: generated families and importers --------------------------------------------------
@dataclass
class Source:
    index: int  # position in data.tasks (names the source in errors and seeds)
    name: str
    task: object
    spec: dict
    weight: float = 1.0  # generated: share of the problems at an n_steps this family covers
    steps: tuple | None = None  # generated: (lo, hi) n_steps it may make; None = any
    splits: tuple | None = None  # generated: the splits it writes to; None = every generated split
    count: int | None = None  # imported: at most this many records (a seeded sample)
    into: str = "train"  # imported: 'train' or the name of an eval split of their own

    @property
    def imported(self) -> bool:
        return hasattr(self.task, "load")  # importers read records; they cannot generate


SPEC_KEYS = {"name", "weight", "args", "steps", "splits", "count", "into"}


def new_task(family: str, **args):
    """get_task, also for a family with a knob called 'name' (reasoning_gym's), which get_task's own
    first parameter would swallow (TypeError: multiple values for argument 'name')."""
    if "name" not in args:
        return get_task(family, **args)
    from reasonlm.tasks import _registry
    cls = _registry().get(family)
    if cls is None:
        return get_task(family)  # raises the unknown-family error that lists the known ones
    try:
        return cls(**args)
    except TypeError as e:
        raise ValueError(f"bad settings for task {family!r}: {e}") from None


def make_sources(cfg: DataConfig) -> list[Source]:
    if not isinstance(cfg.tasks, list) or not cfg.tasks:
        raise DataError("data.tasks is empty: name at least one task family")
    out = []
    for i, spec in enumerate(cfg.tasks):
        if not isinstance(spec, dict) or "name" not in spec:
            raise DataError(f"data.tasks[{i}] needs a 'name', got {spec!r}")
        where = f"data.tasks[{i}] ({spec['name']})"
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(SPEC_KEYS))}")
        args = spec.get("args") or {}
        if not isinstance(args, dict):
            raise DataError(f"{where}: args must be a mapping of the family's knobs, got {args!r}")
        try:
            task = new_task(spec["name"], **args)
            # importers that can raise on malformed records follow the recipe's on_error
            if (hasattr(task, "load") and "on_error" not in args
                    and "on_error" in inspect.signature(type(task).__init__).parameters):
                task = new_task(spec["name"], **args, on_error=cfg.on_error)
        except ValueError as e:  # unknown family (lists the known ones) or bad knobs
            raise DataError(f"{where}: {e}") from None
        src = Source(i, task.name, task, spec)
        if src.imported:
            for key in ("weight", "steps", "splits"):
                if key in spec:
                    raise DataError(f"{where}: '{key}' is for generated families; an importer takes "
                                    f"'count' (a cap) and 'into' (train or an eval split name)")
            count = spec.get("count")
            if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
                raise DataError(f"{where}: count must be a positive integer, got {count!r}")
            into = spec.get("into", "train")
            if into != "train" and (not isinstance(into, str) or into in SPLITS
                                    or not re.fullmatch(r"[a-z][a-z0-9_]*", into)):
                raise DataError(f"{where}: into must be 'train' or a new eval split name ([a-z0-9_], not one of "
                                f"{', '.join(SPLITS)}), got {into!r}")
            src.count, src.into = count, into
        else:
            for key in ("count", "into"):
                if key in spec:
                    raise DataError(f"{where}: '{key}' is for importers; generated families share n_train "
                                    f"(and every generated split) by 'weight'")
            weight = spec.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
                raise DataError(f"{where}: weight must be a number >= 0, got {weight!r}")
            steps = spec.get("steps")
            if steps is not None:
                if (not isinstance(steps, list) or len(steps) != 2 or not all(isinstance(s, int) for s in steps)
                        or not 1 <= steps[0] <= steps[1]):
                    raise DataError(f"{where}: steps must be [lo, hi] with 1 <= lo <= hi, got {steps!r}")
                steps = tuple(steps)
            splits = spec.get("splits")
            if splits is not None:
                if not isinstance(splits, list) or not splits or not set(splits) <= set(SPLITS):
                    raise DataError(f"{where}: splits must be a non-empty list of {', '.join(SPLITS)}, got {splits!r}")
                splits = tuple(splits)
            src.weight, src.steps, src.splits = float(weight), steps, splits
        out.append(src)
    return out


def check_settings(cfg: DataConfig) -> None:
    if cfg.on_error not in ("raise", "skip"):
        raise DataError(f"data.on_error must be 'raise' or 'skip', got {cfg.on_error!r}")
    if cfg.dedup not in DEDUP_MODES:
        raise DataError(f"data.dedup must be one of {', '.join(DEDUP_MODES)}, got {cfg.dedup!r}")
    if cfg.ngram_n < 0:
        raise DataError(f"data.ngram_n must be >= 0 (0 = exact match only), got {cfg.ngram_n}")
    if cfg.shard_rows < 1:
        raise DataError(f"data.shard_rows must be >= 1, got {cfg.shard_rows}")
    if not all(isinstance(p, str) for p in cfg.decontaminate_against):
        raise DataError(f"data.decontaminate_against must be a list of paths, got {cfg.decontaminate_against!r}")
    for name in ("train_steps", "ood_steps", "base_steps"):
        value = getattr(cfg, name)
        if len(value) != 2 or not all(isinstance(v, int) for v in value) or not 1 <= value[0] <= value[1]:
            raise DataError(f"data.{name} must be [lo, hi] with 1 <= lo <= hi, got {value!r}")
    if cfg.train_steps[1] >= cfg.ood_steps[0]:
        raise DataError(f"data.ood_steps must be longer than train_steps, got train_steps={cfg.train_steps} "
                        f"ood_steps={cfg.ood_steps}")


def config_hash(cfg: DataConfig) -> str:
    """sha256 of the resolved data config as canonical JSON: the dataset's identity. `workers` is
    left out: it changes how fast the files are written, never a byte of them."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "workers"}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- generation (runs in worker processes too) ---------------------------------------------------
def generate_job(job: tuple, gens: list[Source], blocked: Blocklist, seed: int):
    """One job: a verified problem for every n_steps target, each outside `blocked`.

    job = (split, index, targets, unique): a target is an n_steps (the family is drawn by weight)
    or (n_steps, family index). `unique` ('normalized'/'exact'/None) also rejects a repeat within
    the job (repeats across jobs are caught by the caller). Returns ([(row, dedup key,
    (n_steps, family index))], Removed). Deterministic in (seed, split, index, targets).
    """
    split, index, targets, unique = job
    rng = random.Random(f"{seed}/{split}/{index}")
    targets = list(targets)
    rng.shuffle(targets)  # the n_steps cycle becomes a random order: no global shuffle needed
    rows, seen, verified, removed, eligible = [], set(), {}, Removed(), {}
    for target in targets:
        family = None
        if isinstance(target, tuple):  # a top-up: (n_steps, the family of the repeat it replaces)
            target, family = target
        if target not in eligible:
            pool = [g for g in gens if covers(g, split, target)]
            cum, total = [], 0.0
            for g in pool:
                total += g.weight
                cum.append(total)
            eligible[target] = pool, cum
        pool, cum = eligible[target]
        # the family is drawn once per problem: retrying a rejected draw within the same family keeps
        # the weights exact even when one family's problems collide with the eval splits more often
        if family is not None:
            src = next(g for g in gens if g.index == family)
        else:
            src = pool[0] if len(pool) == 1 else rng.choices(pool, cum_weights=cum)[0]
        for _ in range(MAX_TRIES):
            try:
                ex = src.task.generate(rng, target)
            except ValueError as e:
                raise DataError(f"data.tasks[{src.index}] ({src.name}) cannot make a {target}-step problem: {e}; "
                                f"give it `steps: [lo, hi]` it can make") from None
            question = ex["question"]
            key = normalize_question(question)
            # a family whose question wraps a problem ('One step of 3+4*2') is checked on the problem itself
            problem = src.task.problem_text(question) if hasattr(src.task, "problem_text") else question
            hit = blocked.hit(problem, key if problem == question else normalize_question(problem))
            if hit is not None:
                removed.add(question, *hit)
                continue
            ukey = question if unique == "exact" else key
            if unique and ukey in seen:
                continue
            meta = ex.get("meta")
            meta = json.dumps(meta, sort_keys=True) if meta else "{}"
            memo = (src.index, question, tuple(ex["steps"]), ex["answer"], meta)
            if memo not in verified:  # the checker is pure: a repeated problem needs no second check
                if not src.task.check(ex, ex["steps"], ex["answer"]).chain_valid:  # a generator bug
                    raise DataError(f"task {src.name} produced a gold solution its checker rejects: {ex}")
                if len(verified) > 100_000:
                    verified.clear()
                verified[memo] = True
            seen.add(ukey)
            rows.append(({"family": src.name, "question": question, "steps": list(ex["steps"]),
                          "answer": ex["answer"], "n_steps": int(ex["n_steps"]), "meta": meta}, ukey,
                         (target, src.index)))
            break
        else:
            raise DataError(f"split {split!r}: no new {target}-step {src.name} problem in {MAX_TRIES} draws (all "
                            f"repeats or eval questions); lower the count or widen the family's knobs")
    return rows, removed


_WORKER: dict = {}


def _init_worker(cfg: DataConfig, blocked: Blocklist) -> None:
    _WORKER.update(gens=[s for s in make_sources(cfg) if not s.imported], blocked=blocked, seed=cfg.seed)


def _worker_job(job):
    return generate_job(job, _WORKER["gens"], _WORKER["blocked"], _WORKER["seed"])


class Runner:
    """Runs jobs in order, in-process or on a worker pool with a bounded number in flight
    (unbounded prefetching would let finished jobs pile up in memory)."""

    def __init__(self, cfg: DataConfig, gens: list[Source], blocked: Blocklist, workers: int):
        self.gens, self.blocked, self.seed, self.pool = gens, blocked, cfg.seed, None
        if workers > 1:
            import multiprocessing
            # spawn, not fork: the parent may hold pyarrow/torch threads that a forked child inherits broken
            self.pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (cfg, blocked))
            self.inflight = 2 * workers

    def map(self, jobs):
        if self.pool is None:
            for job in jobs:
                yield generate_job(job, self.gens, self.blocked, self.seed)
            return
        pending = deque()
        for job in jobs:
            pending.append(self.pool.apply_async(_worker_job, (job,)))
            if len(pending) >= self.inflight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def covers(src: Source, split: str, n_steps: int) -> bool:
    """Whether a generated family may make an n_steps problem for this split."""
    return (src.weight > 0 and (src.steps is None or src.steps[0] <= n_steps <= src.steps[1])
            and (src.splits is None or split in src.splits))


def split_targets(split: str, n: int, steps: list[int], gens: list[Source]) -> list[int]:
    """n_steps of every problem of a split: cycling evenly through `steps`."""
    for s in steps if n else []:
        if not any(covers(g, split, s) for g in gens):
            raise DataError(f"split {split!r} needs {s}-step problems but no family in data.tasks makes them; "
                            f"widen a family's `steps` or change the split's steps")
    return [steps[i % len(steps)] for i in range(n)]


def generated_rows(split: str, targets: list[int], unique: str | None, runner: Runner, removed: Removed,
                   seen: set | None, dups: Counter):
    """Stream the split's generated rows, job by job. With `seen` (a set of digests shared with the
    imported rows), a repeat of any earlier row is dropped and made again, same n_steps and same
    family, in top-up jobs: the split keeps exactly one problem per target and the family weights."""
    n_jobs = -(-len(targets) // JOB_ROWS)
    jobs = [(split, j, targets[j * JOB_ROWS:(j + 1) * JOB_ROWS], unique) for j in range(n_jobs)]
    for _ in range(50):
        missing = []
        for rows, rem in runner.map(jobs):
            removed.merge(rem)
            for row, key, target in rows:
                if seen is not None:
                    d = digest(key)
                    if d in seen:
                        dups[split] += 1
                        missing.append(target)
                        continue
                    seen.add(d)
                yield row
        if not missing:
            return
        jobs = [(split, n_jobs + j, missing[j * JOB_ROWS:(j + 1) * JOB_ROWS], unique)
                for j in range(-(-len(missing) // JOB_ROWS))]
        n_jobs += len(jobs)
    names = {g.index: g.name for g in runner.gens}
    worst = ", ".join(f"{names[f]} {k} steps" for (k, f), _ in Counter(missing).most_common(3))
    raise DataError(f"split {split!r}: still {len(missing)} repeated problems after 50 rounds of new draws "
                    f"({worst}); too few distinct problems: lower the count, narrow `steps` or widen the knobs")


def interleave(generated, n_generated: int, imported: list[dict], rng: random.Random):
    """A uniformly random merge of the two streams: imported rows land anywhere, with no global shuffle."""
    imported = list(imported)
    rng.shuffle(imported)
    it, i, left = iter(generated), 0, n_generated
    while left or i < len(imported):
        rest = len(imported) - i
        if rest and rng.random() * (rest + left) < rest:
            yield imported[i]
            i += 1
        else:
            yield next(it)
            left -= 1


def by_steps(rows, workdir: str):
    """Curriculum order (fewest steps first, stable) without holding the split: spill rows to one
    file per n_steps, then read the files back in order."""
    os.makedirs(workdir, exist_ok=True)
    files = {}
    for row in rows:
        f = files.get(row["n_steps"])
        if f is None:
            f = files[row["n_steps"]] = open(os.path.join(workdir, f"steps-{row['n_steps']}.jsonl"), "w")
        f.write(json.dumps(row) + "\n")
    for k in sorted(files):
        files[k].close()
        with open(files[k].name) as f:
            for line in f:
                yield json.loads(line)
        os.remove(files[k].name)


# --- imports -----------------------------------------------------------------------------------
def record_problem(ex) -> str | None:
    """Why an imported example is unusable, or None."""
    if not isinstance(ex, dict):
        return f"not a record: {type(ex).__name__}"
    if not isinstance(ex.get("question"), str) or not ex["question"].strip():
        return "missing or empty question"
    if not isinstance(ex.get("steps"), list) or not all(isinstance(s, str) for s in ex["steps"]):
        return "steps is not a list of strings"
    if not isinstance(ex.get("answer"), str) or not ex["answer"].strip():
        return "missing or empty answer"
    if not isinstance(ex.get("n_steps"), int) or isinstance(ex.get("n_steps"), bool):
        return "n_steps is not an integer"
    return None


def load_imports(sources: list[Source], cfg: DataConfig) -> tuple[dict, list[dict]]:
    """{into: [rows]} of every importer's verified records, and one report per importer."""
    by_split, reports = {}, []
    for src in sources:
        if not src.imported:
            continue
        hint = "" if cfg.on_error == "skip" else " (data.on_error: skip drops and counts such records)"
        try:
            result = src.task.load()
        except ValueError as e:  # the importer's own message names the file and line
            more = hint if "malformed" in str(e) else ""
            raise DataError(f"data.tasks[{src.index}] ({src.name}): {e}{more}") from None
        examples, report = result if isinstance(result, tuple) else (result, {})
        report = {**json.loads(json.dumps(report)), "failed_check": 0}
        rows = []
        for k, ex in enumerate(examples):
            meta = (ex.get("meta") or {}) if isinstance(ex, dict) else {}
            problem = record_problem(ex)
            if problem is None and not src.task.check(ex, ex["steps"], ex["answer"]).chain_valid:
                problem = "its gold solution fails the checker"
            if problem is not None:
                if cfg.on_error == "raise":
                    where = f"{meta.get('source', src.name)}:{meta.get('line', meta.get('index', k))}"
                    raise DataError(f"data.tasks[{src.index}] ({src.name}): {where}: {problem}{hint}")
                report["failed_check"] += 1
                continue
            rows.append({"family": src.name, "question": ex["question"], "steps": list(ex["steps"]),
                         "answer": ex["answer"], "n_steps": int(ex["n_steps"]),
                         "meta": json.dumps(meta, sort_keys=True)})
        reports.append({"source": src.index, "name": src.name, "into": src.into, "report": report})
        by_split.setdefault(src.into, []).extend((src, r) for r in rows)
    return by_split, reports


def take_imported(pairs: list, blocked: Blocklist | None, removed: Removed, seen: set | None, dedup: str,
                  seed: int, split: str, dups: Counter, reports: list[dict]) -> list[dict]:
    """Imported rows of one split: decontaminated, then each source's `count` (a seeded sample of
    what is left), then de-duplicated against everything kept so far (`seen`)."""
    by_source: dict[int, list] = {}
    for src, row in pairs:
        hit = blocked.hit(row["question"], normalize_question(row["question"])) if blocked is not None else None
        if hit is not None:
            removed.add(row["question"], *hit)
        else:
            by_source.setdefault(src.index, []).append(row)
    out, sources = [], {src.index: src for src, _ in pairs}
    for index, src in sources.items():
        rows = by_source.get(index, [])
        if src.count is not None and src.count < len(rows):
            keep = sorted(random.Random(f"{seed}/import/{index}").sample(range(len(rows)), src.count))
            rows = [rows[k] for k in keep]
        taken = 0
        for row in rows:
            if seen is not None:
                d = digest(row["question"] if dedup == "exact" else normalize_question(row["question"]))
                if d in seen:
                    dups[split] += 1
                    continue
                seen.add(d)
            out.append(row)
            taken += 1
        next(r for r in reports if r["source"] == index)["report"]["taken"] = taken
    return out


# --- decontamination suites ----------------------------------------------------------------------
QUESTION_KEYS = ("question", "problem", "prompt", "input", "query", "text")


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
        import pyarrow.parquet as pq
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
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # suites may hold broken records on purpose
                        yield None, f"{path}:{i}"
                        continue
                    for q in from_record(rec):
                        yield q, f"{path}:{i}"
    elif path.endswith((".yaml", ".yml")):
        import yaml
        with open(path) as f:
            suite = yaml.safe_load(f) or {}
        for spec in suite.get("sources") or [] if isinstance(suite, dict) else []:
            if not isinstance(spec, dict) or "{out_dir}" in json.dumps(spec):  # this dataset's own splits
                continue
            for kind in ("jsonl", "gsm8k"):
                if isinstance(spec.get(kind), str):
                    yield from suite_questions(spec[kind])
            if isinstance(spec.get("dataset"), str):
                yield from suite_questions(os.path.join(spec["dataset"], "jsonl", f"{spec.get('split', 'test')}.jsonl"))
            if isinstance(spec.get("reasoning_gym"), str):
                if importlib.util.find_spec("reasoning_gym") is None:  # optional extra, as in eval
                    print(f"warning: {path}: reasoning_gym not installed; not decontaminating against "
                          f"{spec['reasoning_gym']} (pip install 'reasonlm[gym]')")
                    continue
                for seed in suite.get("seeds") or [0]:
                    task = new_task("reasoning_gym", name=spec["reasoning_gym"], size=spec.get("size", 50),
                                    seed=seed, config=spec.get("config"))
                    for i, ex in enumerate(task.load()[0]):
                        yield ex["question"], f"{path}:{spec['reasoning_gym']}/seed{seed}/{i}"
    elif path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    yield line.strip(), f"{path}:{i}"
    else:
        raise DataError(f"{path}: expected .jsonl, .json, .parquet, .txt, an eval suite .yaml or a directory")


# --- writing: shards, views, statistics -----------------------------------------------------------
def features():
    from datasets import Features, Sequence, Value
    return Features({"id": Value("string"), "family": Value("string"), "question": Value("string"),
                     "steps": Sequence(Value("string")), "answer": Value("string"),
                     "n_steps": Value("int32"), "meta": Value("string")})


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


class SplitStats:
    def __init__(self, tokenizer, stride: int):
        self.tokenizer, self.stride, self.rows = tokenizer, max(1, stride), 0
        self.by_family_steps = Counter()
        self.lengths = {k: Lengths() for k in ("question_chars", "completion_chars", "question_words",
                                               "completion_words", "tokens")}

    def add(self, row: dict, completion: str) -> None:
        q = row["question"]
        self.by_family_steps[(row["family"], row["n_steps"])] += 1
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


class SplitWriter:
    """Writes one split as rows arrive: arrow shards (load_from_disk layout), parquet shards and
    three JSONL views. At most BATCH_ROWS rows are held; a shard closes every `shard_rows` rows."""

    def __init__(self, root: str, split: str, cfg: DataConfig, stats: SplitStats, fingerprint: str):
        import pyarrow as pa
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

    def add(self, row: dict) -> None:
        row = {"id": f"{self.split}-{self.n:07d}", **row}
        completion = render_completion(row["steps"], row["answer"])
        # both views through the one renderer; each half is encoded once and shared by the two lines
        if self.prompt_around:
            before, after = self.prompt_around
            prompt = before + json.dumps(row["question"]) + after
        else:
            prompt = json.dumps(prompt_messages(row["question"]))
        reply = '[{"role": "assistant", "content": ' + json.dumps(completion) + '}]'  # json.dumps([{...}])
        rows_view, chat_view, pc_view = self.views
        rows_view.write(json.dumps(row) + "\n")
        chat_view.write(f'{{"messages": {prompt[:-1]}, {reply[1:]}}}\n')  # json.dumps({"messages": p + r})
        pc_view.write(f'{{"prompt": {prompt}, "completion": {reply}}}\n')
        for c in COLUMNS:
            self.batch[c].append(row[c])
        self.stats.add(row, completion)
        self.n += 1
        self.in_shard += 1
        if len(self.batch["id"]) >= BATCH_ROWS:
            self._write_batch()
        if self.in_shard >= self.shard_rows:
            self._close_shard()

    def _write_batch(self) -> None:
        from datasets.arrow_writer import ArrowWriter
        import pyarrow.parquet as pq
        table = self.pa.Table.from_pydict(self.batch, schema=self.schema)
        if self.arrow is None:
            k = len(self.shards)
            self.shards.append(k)
            self.arrow = ArrowWriter(features=self.features, path=self._arrow_path(k, None))
            self.parquet = pq.ParquetWriter(self._parquet_path(k, None), self.schema)
        self.arrow.write_table(table)
        self.parquet.write_table(table)
        self.batch = {c: [] for c in COLUMNS}

    def _close_shard(self) -> None:
        if self.batch["id"] or self.arrow is None:  # an empty split still gets one (empty) shard
            self._write_batch()
        self.arrow.finalize()
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
    import datasets
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


def load_tokenizer(name: str):
    if not name:
        return None
    from reasonlm.model import ModelError
    from reasonlm.model import load_tokenizer as load  # the trainer's loader: same template, same errors
    try:
        return load(name)
    except ModelError as e:
        raise DataError(f"data.tokenizer: {e}") from None


# --- the stage ----------------------------------------------------------------------------------
def resolve_workers(cfg: DataConfig, n_rows: int) -> int:
    if cfg.workers > 0:
        return cfg.workers
    return min(4, os.cpu_count() or 1) if n_rows >= PARALLEL_MIN_ROWS else 1


def build(cfg: DataConfig, tmp: str) -> dict:
    """Write every split into `tmp`; returns stats.json's content."""
    t0 = time.time()
    check_settings(cfg)
    sources = make_sources(cfg)
    gens = [s for s in sources if not s.imported]
    chash = config_hash(cfg)
    tokenizer = load_tokenizer(cfg.tokenizer)
    os.makedirs(tmp)
    state_template, info_text = disk_templates(tmp)
    imports, import_reports = load_imports(sources, cfg)
    lo, hi = cfg.train_steps
    olo, ohi = cfg.ood_steps
    in_dist, ood = list(range(max(lo, cfg.eval_min_steps), hi + 1)), list(range(olo, ohi + 1))
    summaries, removed, dups = {}, {}, Counter()

    def write(split: str, rows, expected: int) -> None:
        fp = hashlib.sha256(f"{chash}/{split}/{GENERATOR_VERSION}/{reasonlm.__version__}".encode()).hexdigest()[:16]
        stats = SplitStats(tokenizer, -(-expected // TOKEN_SAMPLE))
        writer = SplitWriter(tmp, split, cfg, stats, fp)
        t = time.time()
        for row in rows:
            writer.add(row)
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
            between_evals.add(r["question"], f"{split}-{i:07d}", split)
    for split, pairs in imports.items():
        if split != "train":
            eval_rows[split] = take_imported(pairs, None, Removed(), set(), "normalized", cfg.seed, split,
                                             Counter(), import_reports)
    for split, rows in eval_rows.items():
        for i, r in enumerate(rows):
            blocked.add(r["question"], f"{split}-{i:07d}", split, grams=split not in EVAL_SPLITS)
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
    import datasets
    import pyarrow
    stats = {
        "provenance": {"reasonlm_version": reasonlm.__version__, "generator_version": GENERATOR_VERSION,
                       "seed": cfg.seed, "config_sha256": chash, "datasets_version": datasets.__version__,
                       "pyarrow_version": pyarrow.__version__, "tokenizer": cfg.tokenizer or None},
        "sources": [source_info(s, import_reports) for s in sources],
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
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(dataset_card(stats, order))
    licenses = sorted({(s["name"], s["license"]) for s in stats["sources"]})
    if not all(lic.startswith("Apache-2.0") for _, lic in licenses):  # the card's license_link points here
        with open(os.path.join(tmp, "LICENSE.md"), "w") as f:
            f.write("# Licenses of the sources of this dataset\n\n" + "".join(f"- {n}: {lic}\n" for n, lic in licenses))
    print(f"data: built in {time.time() - t0:.1f}s")
    return stats


def source_info(src: Source, import_reports: list[dict]) -> dict:
    info = {"name": src.name, "kind": "imported" if src.imported else "generated",
            "args": src.spec.get("args") or {}, "license": getattr(src.task, "license", "unknown"),
            "version": str(getattr(src.task, "version", GENERATOR_VERSION))}
    if src.imported:
        info.update(into=src.into, count=src.count,
                    report=next(r["report"] for r in import_reports if r["source"] == src.index))
    else:
        info.update(weight=src.weight, steps=list(src.steps) if src.steps else None,
                    splits=list(src.splits) if src.splits else None)
    return info


def run(cfg: DataConfig, out_dir: str) -> str:
    """Build the dataset into <out_dir>/data atomically; returns the path."""
    final = os.path.join(out_dir, "data")
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        stats = build(cfg, tmp)
    except BaseException:  # error or Ctrl-C: leave no partial dataset behind, and the old one intact
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    counts = ", ".join(f"{k} {v['rows']}" for k, v in stats["splits"].items())
    print(f"data: wrote {final} ({counts})")
    return final


# --- the card ----------------------------------------------------------------------------------
def size_category(n: int) -> str:
    for hi, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                     (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < hi:
            return name
    return "100M<n<1B"


def front_matter(stats: dict, order: list[str]) -> str:
    """YAML header the Hub reads: license, tags, and `configs:` naming every split's files."""
    import yaml
    licenses = sorted({s["license"] for s in stats["sources"]})
    apache = all(lic.startswith("Apache-2.0") for lic in licenses)
    meta = {"license": "apache-2.0" if apache else "other"}
    if not apache:
        meta["license_name"] = "mixed"
        meta["license_link"] = "LICENSE.md"  # the card's Licenses section lists every source's
    meta.update({
        "language": ["en"], "task_categories": ["text-generation", "question-answering"],
        "tags": ["reasoning", "chain-of-thought", "synthetic", "math"],
        "pretty_name": "reasonlm step-by-step reasoning data",
        "size_categories": [size_category(sum(s["rows"] for s in stats["splits"].values()))],
        # one config: `datasets` picks a single file format for every config of a repo (from the
        # first one's files), so the JSONL chat views cannot be configs next to the parquet rows
        "configs": [{"config_name": "default", "data_files": [{"split": s, "path": f"parquet/{s}-*.parquet"}
                                                              for s in order]}],
    })
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, width=200) + "---\n"


def fmt_lengths(v: dict | None) -> str:
    return " | ".join(str(v[k]) for k in ("min", "mean", "p50", "p95", "max")) if v else "- | - | - | - | -"


def stats_markdown(stats: dict) -> str:
    """The statistics sections of the card (also what `reasonlm data --stats` prints)."""
    p = stats["provenance"]
    out = ["## Provenance", "",
           f"reasonlm {p['reasonlm_version']}, generator version {p['generator_version']}, seed {p['seed']}, "
           f"datasets {p['datasets_version']}, pyarrow {p['pyarrow_version']}.",
           f"Config sha256 (the resolved `data:` config of config.yaml as canonical JSON, without `workers`): "
           f"`{p['config_sha256']}`",
           "", "## Sources", "", "| # | source | kind | weight / count | steps / into | license | args |",
           "|---|---|---|---|---|---|---|"]
    for i, s in enumerate(stats["sources"]):
        if s["kind"] == "generated":
            amount, where = f"weight {s['weight']:g}", f"steps {s['steps']}" if s["steps"] else "any steps"
        else:
            amount, where = f"count {s['count'] or 'all'}", f"into {s['into']}"
        out.append(f"| {i} | {s['name']} | {s['kind']} | {amount} | {where} | {s['license']} | "
                   f"`{json.dumps(s['args'], sort_keys=True)}` |")
    imported = [(i, s) for i, s in enumerate(stats["sources"]) if s["kind"] == "imported"]
    if imported:
        out += ["", "Imported records (read, kept by the importer, rejected by reason, failed our check, taken):", ""]
        for i, s in imported:
            out.append(f"- {i} {s['name']}: `{json.dumps(s['report'], sort_keys=True)}`")
    out += ["", "## Counts", "", "| split | rows | by family | by n_steps |", "|---|---|---|---|"]
    for name, sp in stats["splits"].items():
        fam = ", ".join(f"{k} {v}" for k, v in sp["by_family"].items())
        steps = ", ".join(f"{k}: {v}" for k, v in sp["by_steps"].items())
        out.append(f"| {name} | {sp['rows']} | {fam} | {steps} |")
    out += ["", "<details><summary>split x family x n_steps</summary>", "", "| split | family | n_steps | count |",
            "|---|---|---|---|"]
    for name, sp in stats["splits"].items():
        out += [f"| {name} | {f} | {s} | {c} |" for f, s, c in sp["by_family_steps"]]
    out += ["", "</details>", "", "## Lengths", "",
            "Characters and whitespace-separated words of the question and of the gold completion "
            "(steps + `#### answer`)" + (f"; tokens = prompt + completion as the trainer encodes them with "
                                         f"`{p['tokenizer']}` (every k-th row)" if p.get("tokenizer") else "") + ".",
            "", "| split | measure | min | mean | p50 | p95 | max |", "|---|---|---|---|---|---|---|"]
    for name, sp in stats["splits"].items():
        for measure, v in sp["lengths"].items():
            label = f"tokens (every {sp['token_sample_every']})" if measure == "tokens" else measure
            out.append(f"| {name} | {label} | {fmt_lengths(v)} |")
    d, dd = stats["decontamination"], stats["dedup"]
    out += ["", "## Decontamination", "",
            f"Train and base were checked against {sum(d['against'].values())} eval questions "
            f"({', '.join(f'{k} {v}' for k, v in d['against'].items())}): exact normalized match, and "
            + (f"any shared {d['ngram_n']}-word sequence with imported eval splits and eval suites for questions "
               f"of at least {d['ngram_n']} words (generated eval splits share their generators' templates, so "
               f"they are matched exactly)." if d["ngram_n"] else "no n-gram test (ngram_n 0).")
            + " Generated problems that matched were replaced by fresh ones; imported ones were dropped. "
              "Details and examples: decontamination.json.", "",
            "| split | origin | exact | n-gram |", "|---|---|---|---|"]
    for split, parts in d["removed"].items():
        out += [f"| {split} | {origin} | {v['exact']} | {v['ngram']} |" for origin, v in parts.items()]
    out.append("")
    for e in d["examples"]:
        out.append(f"- removed ({e['reason']}, matches {e['matches']}): {json.dumps(e['question'][:160])}")
    out += ["", f"De-duplication: {dd['mode']}" + (f"; repeats removed: {json.dumps(dd['removed'])}" if dd["removed"]
                                                    else "; no repeats removed") +
            " (eval splits are always distinct by normalized question).", ""]
    return "\n".join(out)


def dataset_card(stats: dict, order: list[str]) -> str:
    licenses = sorted({(s["name"], s["license"]) for s in stats["sources"]})
    return "\n".join([
        front_matter(stats, order).rstrip("\n"), "",
        "# reasonlm step-by-step reasoning data", "",
        "Generated by `reasonlm data`. Every gold solution (generated or imported) was verified step by step "
        "by its task's checker before it was written. A completion is one step per line, then `#### answer`.", "",
        "Splits: `base` (the base model's pretraining corpus: short primitives), `train`, `validation`, "
        "`test` (in-distribution) and `test_ood` (longer chains than any training problem)"
        + (", plus imported eval splits: " + ", ".join(f"`{s}`" for s in order if s not in SPLITS)
           if any(s not in SPLITS for s in order) else "") + ".", "",
        "Files: `parquet/` (the Hub's default config), `jsonl/<split>.jsonl` (the same rows), "
        "`jsonl/<split>.chat.jsonl` (`messages`), `jsonl/<split>.prompt_completion.jsonl` (TRL's prompt/completion), "
        "and `datasets.load_from_disk` arrow files under `<split>/`.", "",
        "```python", "from datasets import load_dataset, load_from_disk",
        "ds = load_from_disk(\"path/to/data\")                 # typed DatasetDict",
        "ds = load_dataset(\"path/to/data\")                   # the parquet files (or the Hub id after upload)",
        "chat = load_dataset(\"json\", data_files=\"path/to/data/jsonl/train.chat.jsonl\", split=\"train\")",
        "```", "",
        stats_markdown(stats),
        "## Licenses", "",
        *[f"- {name}: {lic}" for name, lic in licenses], "",
    ])


def print_stats(path: str) -> None:
    """`reasonlm data --stats PATH`: the card's statistics of a built dataset."""
    p = os.path.join(path, "stats.json")
    if not os.path.isfile(p):
        raise DataError(f"{path} has no stats.json: not a dataset written by `reasonlm data` (or an older one)")
    with open(p) as f:
        stats = json.load(f)
    print(f"# {path}\n")
    print(stats_markdown(stats))


def load(path: str):
    """The DatasetDict written by `run`, with a one-line error if it is not there."""
    from datasets import load_from_disk
    if not os.path.isdir(path):
        raise DataError(f"dataset not found: {path} (run `reasonlm data RECIPE` first)")
    try:
        return load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path} is not a dataset written by `reasonlm data`: {str(e).splitlines()[0]}") from None
