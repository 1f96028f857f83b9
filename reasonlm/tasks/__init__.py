"""Task families. One file per family; each holds its generator, gold steps, checker and reward.

A task is a small object (nanochat style) that every stage reuses:
  - the data stage calls `generate(rng, n_steps)` to make examples,
  - the evaluator and the chat REPL call `check(example, steps, answer)` on model output,
  - training/eval may call `reward(example, completion)`.

An example is a plain dict: {"question", "steps", "answer", "n_steps", "meta"}; the data stage
adds "id", "family" and "split". `meta` holds whatever the checker needs beyond the question
(JSON-serialisable). Adding a family touches its own file plus one line in `TASKS` below.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from reasonlm.answer import answers_match, parse_completion


@dataclass
class Check:
    """The verdict on one solution (gold or generated)."""
    answer_correct: bool
    step_ok: list[bool] = field(default_factory=list)  # one per step, in order
    first_bad_step: int | None = None  # 1-based index of the first wrong step, None if none
    chain_valid: bool = False  # every step right and the chain reaches the final answer

    @property
    def right_answer_wrong_chain(self) -> bool:
        return self.answer_correct and not self.chain_valid


def finish_check(answer_correct: bool, step_ok: list[bool], complete: bool) -> Check:
    """Shared bookkeeping: first bad step and chain validity from per-step verdicts."""
    first_bad = None if all(step_ok) else next(i + 1 for i, ok in enumerate(step_ok) if not ok)
    chain_valid = first_bad is None and complete and answer_correct
    return Check(answer_correct, step_ok, first_bad, chain_valid)


def reward_from_check(check: Check) -> float:
    """1 for a right answer through a valid chain, 0.5 for a right answer through a broken one."""
    if not check.answer_correct:
        return 0.0
    return 1.0 if check.chain_valid else 0.5


def check_completion(task, example: dict, completion: str) -> Check:
    parsed = parse_completion(completion)
    return task.check(example, parsed.steps, parsed.answer)


def _registry() -> dict:
    # Imported here, not at the top: task modules import Check & co. from this file.
    from reasonlm.tasks import arithmetic, gsm8k, linear_equations, object_swaps, reasoning_gym, word_problems
    return {
        "arithmetic": arithmetic.ArithmeticChain,
        "arithmetic_step": arithmetic.ArithmeticStep,  # one step of a long expression (base corpus)
        "word_problems": word_problems.WordProblems,
        "linear_equations": linear_equations.LinearEquations,
        "object_swaps": object_swaps.ObjectSwaps,
        "gsm8k": gsm8k.GSM8K,  # importer: load() instead of generate()
        "reasoning_gym": reasoning_gym.ReasoningGym,  # importer, optional extra reasonlm[gym]
    }


def get_task(name: str, /, **knobs):
    """The task object for a family name, configured with its difficulty knobs."""
    tasks = _registry()
    if name not in tasks:
        raise ValueError(f"unknown task family {name!r}; known: {', '.join(sorted(tasks))}")
    try:
        return tasks[name](**knobs)
    except TypeError as e:
        raise ValueError(f"bad settings for task {name!r}: {e}") from None


def known_tasks() -> list[str]:
    return sorted(_registry())


__all__ = ["Check", "finish_check", "reward_from_check", "check_completion", "get_task", "known_tasks", "answers_match"]
