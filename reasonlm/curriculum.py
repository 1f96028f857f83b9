"""RL's length curriculum (rl.curriculum): which chain lengths a round's fresh problems have, and
when that range moves up.

RL starts on the lengths rl.curriculum.start = [lo, hi]. Every rl.probe_every rounds the stage
measures greedy accuracy on probe_problems fixed held-out problems of the frontier length hi
(sources.ladder_problems: the same problems for a length every time, with RL's probe seed); when it
reaches grow_when, the range moves up by `step` (lo and hi together, hi never past `max`). Lengths
the range has left behind stay in play as replay: a `replay` fraction of the fresh problems, spread
evenly (the k-th fresh problem is a replay when floor(k x replay) steps up, so every round of f fresh
problems holds at least floor(f x replay) of them), is drawn from [start lo, lo - 1]. The state (the
range and its moves) is a plain dict in RL's checkpoints, so a resumed run moves as the first did.

Before a model loads, `check_reach` makes sure the longest chains the curriculum may reach fit: the
prompt and the answer of a max-step chain in the model's context, the answer in
rl.max_completion_length (a longer answer is cut off, so it can never be right).
"""
from __future__ import annotations

import math
import random

from reasonlm.answer import encode_example
from reasonlm.config import CurriculumConfig, RLConfig
from reasonlm.example import render_target
from reasonlm.sources import ladder_problems

REACH_PROBLEMS = 20  # chains drawn per length to size the longest prompt + answer
REACH_SEED = 3_000_017  # apart from RL's problems (rl.seed), its probe (2_000_003) and bench_rl's ladder (1_000_003)


class CurriculumError(ValueError):
    """A curriculum the task or the model cannot follow, reported as one line."""


class Curriculum:
    """The current range of lengths, the moves so far, and the draw of a fresh problem's length."""

    def __init__(self, cfg: CurriculumConfig, state: dict | None = None):
        self.cfg = cfg
        self.range: list[int] = list(state["range"]) if state else list(cfg.start)
        self.moves: list[dict] = [dict(m) for m in state["moves"]] if state else []

    @property
    def frontier(self) -> int:
        """The longest length trained now: the one the probe measures."""
        return self.range[1]

    def n_steps(self, rng: random.Random, made: int) -> int:
        """The length of the `made`-th fresh problem (from 1): one draw of `rng` either way, from the
        lengths left behind when it is a replay (see the module docstring), else from the range."""
        lo, hi = self.range
        first = self.cfg.start[0]
        if lo > first and math.floor(made * self.cfg.replay) > math.floor((made - 1) * self.cfg.replay):
            return rng.randint(first, lo - 1)
        return rng.randint(lo, hi)

    def after_probe(self, rnd: int, accuracy: float) -> dict | None:
        """The move after round `rnd`'s probe found `accuracy` at the frontier, or None (below
        grow_when, or already at max)."""
        lo, hi = self.range
        shift = min(self.cfg.step, self.cfg.max - hi)
        if accuracy < self.cfg.grow_when or shift <= 0:
            return None
        move = {"round": rnd, "from": [lo, hi], "to": [lo + shift, hi + shift], "probe_accuracy": accuracy}
        self.range = list(move["to"])
        self.moves.append(move)
        return move

    def state(self) -> dict:
        """What a checkpoint keeps (JSON: lists and numbers only)."""
        return {"range": list(self.range), "moves": [dict(m) for m in self.moves]}

    def summary(self) -> dict:
        """The curriculum as RL's stats (rl_stats.json) and the pipeline's report show it."""
        return {"start": list(self.cfg.start), "range": list(self.range), "max": self.cfg.max,
                "grow_when": self.cfg.grow_when, "moves": [dict(m) for m in self.moves]}


def describe(move: dict) -> str:
    """One line for a move (printed, and the report's table says the same)."""
    return (f"curriculum: after round {move['round']} the frontier ({move['from'][1]} steps) is at "
            f"{move['probe_accuracy']:.3f}: lengths {move['from']} -> {move['to']}")


def longest(task, tokenizer, n_steps: int) -> tuple[int, int]:
    """(prompt + answer tokens, answer tokens incl. the end of turn) of the longest of REACH_PROBLEMS
    gold chains of n_steps steps, as SFT encodes them."""
    worst = (0, 0)
    for ex in ladder_problems(task, [n_steps], REACH_PROBLEMS, REACH_SEED, "reach"):
        prompt, completion = encode_example(tokenizer, ex.question, render_target(ex, "cot"))
        worst = max(worst, (len(prompt) + len(completion), len(completion)))
    return worst


def check_reach(task, tokenizer, context: int | None, cfg: RLConfig) -> None:
    """One CurriculumError line when the task makes no problems of a length the curriculum may
    reach, or a max-step chain does not fit the model's context (`context` tokens; None: no limit)
    or its answer rl.max_completion_length, naming the longest length that does fit."""
    cur = cfg.curriculum

    def fits(n: int) -> tuple[bool, str]:
        try:
            total, answer = longest(task, tokenizer, n)
        except ValueError as e:  # a family that cannot make a length says so
            raise CurriculumError(f"rl.curriculum: rl.task {task.name} makes no problems of {n} steps: "
                                  f"{str(e).splitlines()[0]}") from None
        if context is not None and total > context:
            return False, f"{total} tokens (prompt + answer), more than the model's context of {context}"
        if answer > cfg.max_completion_length:
            return False, (f"an answer of {answer} tokens, more than rl.max_completion_length "
                           f"{cfg.max_completion_length}")
        return True, ""

    verdicts = {n: fits(n) for n in range(cur.start[0], cur.max + 1)}  # every length it may train on is made
    ok, why = verdicts[cur.max]
    if ok:
        return
    first_miss = next(n for n, (fit, _) in verdicts.items() if not fit)
    holds = f"up to {first_miss - 1} steps" if first_miss > cur.start[0] else f"none of rl.curriculum.start {cur.start}"
    raise CurriculumError(f"rl.curriculum.max is {cur.max}, but the longest of {REACH_PROBLEMS} {cur.max}-step "
                          f"{task.name} chains takes {why}: it holds {holds}")
