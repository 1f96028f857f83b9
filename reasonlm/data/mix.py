"""The mix: what `data.tasks` asks for, one MixEntry per entry, checked before anything is made.

    generated   {name: arithmetic, weight: 2, steps: [1, 8], args: {digits: 1}, splits: [base]}
    imported    {name: gsm8k, args: {path: ..., split: test}, count: 5000, into: gsm8k_test}

A MixEntry is also the one place the data stage calls its task: `draw` (a generated problem),
`problem` (the text decontamination compares), `verify` (the checker on a gold solution) and
`load` (an importer's records), all Examples (the protocol is in reasonlm/tasks/base.py).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from reasonlm.config import DataConfig, RLConfig
from reasonlm.credit import RewardError, preflight
from reasonlm.example import Example
from reasonlm.tasks import get_task
from reasonlm.tasks.base import Task, is_importer

EVAL_SPLITS = ("validation", "test", "test_ood")
SPLITS = ("base", "train", *EVAL_SPLITS)
ENTRY_KEYS = {"name", "weight", "args", "steps", "splits", "count", "into"}


class DataError(ValueError):
    """A data problem reported as one line."""


@dataclass
class MixEntry:
    index: int  # position in data.tasks (names the entry in errors and seeds)
    name: str
    task: Task
    spec: dict
    weight: float = 1.0  # generated: share of the problems at an n_steps this family covers
    steps: tuple | None = None  # generated: (lo, hi) n_steps it may make; None = any
    splits: tuple | None = None  # generated: the splits it writes to; None = every generated split
    count: int | None = None  # imported: at most this many records (a seeded sample)
    into: str = "train"  # imported: 'train' or the name of an eval split of their own

    @property
    def imported(self) -> bool:
        return is_importer(self.task)  # importers read records; they cannot generate

    # --- the task API ------------------------------------------------------------------------
    def draw(self, rng: random.Random, n_steps: int) -> Example:
        """A generated problem; ValueError when the family cannot make n_steps."""
        return self.task.generate(rng, n_steps)

    def problem(self, question: str) -> str:
        """The text decontamination compares: a family whose question wraps a problem ('One step
        of 3+4*2') is compared on the problem itself."""
        return self.task.problem_text(question)

    def verify(self, example: Example) -> bool:
        """Whether the task's checker accepts the example's own gold solution (an answer-only
        example: its answer)."""
        return self.task.check(example, example.steps, example.answer).accepted

    def preflight(self, cfg: DataConfig) -> None:
        """RL's reward preflight (credit.preflight), at data time: gold solutions of the lengths this
        family makes must score exactly 1, and copies with a wrong answer, no answer line or one
        wrong step below 1, so a checker that rejects its own gold (or accepts anything) stops the
        build before anything is trained on it. Its own random stream: the dataset is unchanged."""
        lo, hi = self.steps or (min(cfg.base_steps[0], cfg.train_steps[0]), cfg.ood_steps[1])
        try:
            preflight(self.task, RLConfig(n_steps=[lo, hi], reward="process", seed=cfg.seed))
        except RewardError as e:
            raise DataError(f"data.tasks[{self.index}] ({self.name}): {e}") from None

    def load(self) -> tuple[list[Example], dict]:
        """An importer's examples (not yet checked) and its report; ValueError names file and line."""
        return self.task.load()


def mix_entries(cfg: DataConfig) -> list[MixEntry]:
    """Every entry of data.tasks, its task made with its knobs; a bad entry is one DataError."""
    if not isinstance(cfg.tasks, list) or not cfg.tasks:
        raise DataError("data.tasks is empty: name at least one task family")
    return [mix_entry(i, spec, cfg.on_error) for i, spec in enumerate(cfg.tasks)]


def mix_entry(i: int, spec, on_error: str) -> MixEntry:
    if not isinstance(spec, dict) or "name" not in spec:
        raise DataError(f"data.tasks[{i}] needs a 'name', got {spec!r}")
    where = f"data.tasks[{i}] ({spec['name']})"
    unknown = set(spec) - ENTRY_KEYS
    if unknown:
        raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(ENTRY_KEYS))}")
    args = spec.get("args") or {}
    if not isinstance(args, dict):
        raise DataError(f"{where}: args must be a mapping of the family's knobs, got {args!r}")
    try:
        task = get_task(spec["name"], **args)
        if is_importer(task) and "on_error" not in args:  # malformed records: the recipe's on_error
            task = get_task(spec["name"], **args, on_error=on_error)
    except ValueError as e:  # unknown family (lists the known ones) or bad knobs
        raise DataError(f"{where}: {e}") from None
    entry = MixEntry(i, task.name, task, spec)
    if entry.imported:
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
        entry.count, entry.into = count, into
        return entry
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
    entry.weight, entry.steps, entry.splits = float(weight), steps, splits
    return entry
