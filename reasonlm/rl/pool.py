"""The difficulty pool: which problems the next RL round samples (retried unsolved ones, then fresh
ones from the generator or an importer's records)."""
from __future__ import annotations

import dataclasses
import random

from reasonlm.config import RLConfig
from reasonlm.curriculum import Curriculum
from reasonlm.example import Example
from reasonlm.sources import new_problem


class ProblemPool:
    """Problems for the next round: retried unsolved ones first (up to half a round), then fresh
    ones: from the generator, or the next of an importer's `records` (a fresh seeded order every
    pass over them). A problem every sample solved retires; others return up to `retries` times."""

    def __init__(self, task, cfg: RLConfig, state: dict | None = None, records: list[Example] | None = None,
                 curriculum: Curriculum | None = None):
        self.task, self.cfg, self.records, self.curriculum = task, cfg, records, curriculum
        self.rng = random.Random(cfg.seed)
        self.queue: list[tuple[Example, int]] = []  # (problem, attempts so far)
        self.made = self.retired = 0
        self._order: tuple[int, list[int]] = (-1, [])  # (pass, record order): a function of the seed and `made`
        if state:
            version, internal, gauss = state["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
            self.queue = [(Example.from_row(row), n) for row, n in state["queue"]]
            self.made, self.retired = state["made"], state["retired"]

    def draw(self, n: int) -> list[tuple[Example, int]]:
        retry = min(len(self.queue), n // 2)
        out, self.queue = self.queue[:retry], self.queue[retry:]
        while len(out) < n:
            out.append((self.fresh(), 0))
        return out

    def fresh(self) -> Example:
        self.made += 1
        if self.records is None:
            replay = self.cfg.replay_fraction and self.rng.random() < self.cfg.replay_fraction
            if self.curriculum and not replay:  # the curriculum's range (and its own replay) instead of rl.n_steps
                n_steps = self.curriculum.n_steps(self.rng, self.made)
            else:
                n_steps = self.rng.randint(*(self.cfg.replay_steps if replay else self.cfg.n_steps))
            return new_problem(self.task, self.rng, n_steps, f"rl-{self.made}")
        epoch, k = divmod(self.made - 1, len(self.records))
        if self._order[0] != epoch:
            self._order = (epoch, random.Random(self.cfg.seed * 1_000_003 + epoch).sample(range(len(self.records)),
                                                                                          len(self.records)))
        example = self.records[self._order[1][k]]
        return dataclasses.replace(example, id=example.id or f"rl-{self.made}")

    def give_back(self, example: Example, attempts: int, solved: int, group: int) -> None:
        if solved == group:
            self.retired += 1
        elif attempts < self.cfg.retries:
            self.queue.append((example, attempts + 1))

    def state(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "made": self.made, "retired": self.retired,
                "queue": [[e.to_row(), n] for e, n in self.queue]}
