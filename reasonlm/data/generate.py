"""Generation: verified problems of the generated families, in seeded jobs, in order.

A split's problems are a list of n_steps targets (`split_targets`: cycling evenly through the
split's range). They are cut into jobs of JOB_ROWS, each with its own seed (seed/split/job), and
`Runner` runs the jobs in-process or on worker processes, handing back the results in job order:
the same recipe gives the same problems for any number of workers. Each problem's family is drawn
by weight among the families that cover its n_steps; a draw that the Blocklist hits, or that
repeats one already kept, is replaced by a fresh draw of the same family.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
from collections import Counter, deque

from reasonlm.config import DataConfig
from reasonlm.data.decontaminate import Blocklist, Removed, digest
from reasonlm.data.mix import DataError, MixEntry, mix_entries
from reasonlm.example import Example, question_key
from reasonlm.tasks import load_plugins, loaded_task_files

GENERATOR_VERSION = "3"  # bump whenever the same recipe and seed would produce different problems
JOB_ROWS = 2000  # problems per generation job (a job has its own seed); part of the generator version
MAX_TRIES = 2000  # draws for one problem before we conclude the recipe's space is exhausted
PARALLEL_MIN_ROWS = 20_000  # below this, starting worker processes costs more than it saves


def generated_rows(split: str, targets: list[int], unique: str | None, runner: "Runner", removed: Removed,
                   seen: set | None, dups: Counter):
    """Stream the split's generated Examples, job by job. With `seen` (a set of digests shared with
    the imported rows), a repeat of any earlier row is dropped and made again, same n_steps and same
    family, in top-up jobs: the split keeps exactly one problem per target and the family weights."""
    n_jobs = -(-len(targets) // JOB_ROWS)
    jobs = [(split, j, targets[j * JOB_ROWS:(j + 1) * JOB_ROWS], unique) for j in range(n_jobs)]
    for _ in range(50):
        missing = []
        for examples, rem in runner.map(jobs):
            removed.merge(rem)
            for example, key, target in examples:
                if seen is not None:
                    d = digest(key)
                    if d in seen:
                        dups[split] += 1
                        missing.append(target)
                        continue
                    seen.add(d)
                yield example
        if not missing:
            return
        jobs = [(split, n_jobs + j, missing[j * JOB_ROWS:(j + 1) * JOB_ROWS], unique)
                for j in range(-(-len(missing) // JOB_ROWS))]
        n_jobs += len(jobs)
    names = {g.index: g.name for g in runner.gens}
    worst = ", ".join(f"{names[f]} {k} steps" for (k, f), _ in Counter(missing).most_common(3))
    raise DataError(f"split {split!r}: still {len(missing)} repeated problems after 50 rounds of new draws "
                    f"({worst}); too few distinct problems: lower the count, narrow `steps` or widen the knobs")


def split_targets(split: str, n: int, steps: list[int], gens: list[MixEntry]) -> list[int]:
    """n_steps of every problem of a split: cycling evenly through `steps`."""
    for s in steps if n else []:
        if not any(covers(g, split, s) for g in gens):
            raise DataError(f"split {split!r} needs {s}-step problems but no family in data.tasks makes them; "
                            f"widen a family's `steps` or change the split's steps")
    return [steps[i % len(steps)] for i in range(n)]


def covers(entry: MixEntry, split: str, n_steps: int) -> bool:
    """Whether a generated family may make an n_steps problem for this split."""
    return (entry.weight > 0 and (entry.steps is None or entry.steps[0] <= n_steps <= entry.steps[1])
            and (entry.splits is None or split in entry.splits))


# --- one job (runs in worker processes too) -------------------------------------------------------
def generate_job(job: tuple, gens: list[MixEntry], blocked: Blocklist, seed: int):
    """One job: a verified problem for every n_steps target, each outside `blocked`.

    job = (split, index, targets, unique): a target is an n_steps (the family is drawn by weight)
    or (n_steps, family index). `unique` ('normalized'/'exact'/None) also rejects a repeat within
    the job (repeats across jobs are caught by the caller). Returns ([(Example, dedup key,
    (n_steps, family index))], Removed). Deterministic in (seed, split, index, targets).
    """
    split, index, targets, unique = job
    rng = random.Random(f"{seed}/{split}/{index}")
    targets = list(targets)
    rng.shuffle(targets)  # the n_steps cycle becomes a random order: no global shuffle needed
    out, seen, verified, removed, eligible = [], set(), {}, Removed(), {}
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
            entry = next(g for g in gens if g.index == family)
        else:
            entry = pool[0] if len(pool) == 1 else rng.choices(pool, cum_weights=cum)[0]
        for _ in range(MAX_TRIES):
            try:
                example = entry.draw(rng, target)
            except ValueError as e:
                raise DataError(f"data.tasks[{entry.index}] ({entry.name}) cannot make a {target}-step problem: "
                                f"{e}; give it `steps: [lo, hi]` it can make") from None
            question = example.question
            key = question_key(question)
            problem = entry.problem(question)
            hit = blocked.hit(problem, key if problem == question else question_key(problem))
            if hit is not None:
                removed.add(question, *hit)
                continue
            ukey = question if unique == "exact" else key
            if unique and ukey in seen:
                continue
            memo = (entry.index, question, example.steps, example.answer, json.dumps(example.meta, sort_keys=True))
            if memo not in verified:  # the checker is pure: a repeated problem needs no second check
                if not entry.verify(example):  # a generator bug
                    raise DataError(f"task {entry.name} produced a gold solution its checker rejects: {example}")
                if len(verified) > 100_000:
                    verified.clear()
                verified[memo] = True
            seen.add(ukey)
            out.append((example, ukey, (target, entry.index)))
            break
        else:
            raise DataError(f"split {split!r}: no new {target}-step {entry.name} problem in {MAX_TRIES} draws (all "
                            f"repeats or eval questions); lower the count or widen the family's knobs")
    return out, removed


# --- running jobs -----------------------------------------------------------------------------
def resolve_workers(cfg: DataConfig, n_rows: int) -> int:
    if cfg.workers > 0:
        return cfg.workers
    return min(4, os.cpu_count() or 1) if n_rows >= PARALLEL_MIN_ROWS else 1


_WORKER: dict = {}


def _init_worker(cfg: DataConfig, blocked: Blocklist, task_files: list[str]) -> None:
    load_plugins(task_files, quiet=True)  # a spawned process starts with the built-in families only
    _WORKER.update(gens=[e for e in mix_entries(cfg) if not e.imported], blocked=blocked, seed=cfg.seed)


def _worker_job(job):
    return generate_job(job, _WORKER["gens"], _WORKER["blocked"], _WORKER["seed"])


class Runner:
    """Runs jobs in order, in-process or on a worker pool with a bounded number in flight
    (unbounded prefetching would let finished jobs pile up in memory)."""

    def __init__(self, cfg: DataConfig, gens: list[MixEntry], blocked: Blocklist, workers: int):
        self.gens, self.blocked, self.seed, self.pool = gens, blocked, cfg.seed, None
        if workers > 1:
            # spawn, not fork: the parent may hold pyarrow/torch threads that a forked child inherits broken
            self.pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker,
                                                                  (cfg, blocked, loaded_task_files()))
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


# --- putting a split's rows in order --------------------------------------------------------------
def interleave(generated, n_generated: int, imported: list[Example], rng: random.Random):
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


def by_steps(examples, workdir: str):
    """Curriculum order (fewest steps first, stable) without holding the split: spill rows to one
    file per n_steps, then read the files back in order."""
    os.makedirs(workdir, exist_ok=True)
    files = {}
    for example in examples:
        f = files.get(example.n_steps)
        if f is None:
            f = files[example.n_steps] = open(os.path.join(workdir, f"steps-{example.n_steps}.jsonl"), "w")
        f.write(json.dumps(example.to_row()) + "\n")
    for k in sorted(files):
        files[k].close()
        with open(files[k].name) as f:
            for line in f:
                yield Example.from_row(json.loads(line))
        os.remove(files[k].name)
