"""Task families. One file per family; each holds its generator (or importer), gold steps,
checker, reward and, for generated families, the parser chat's /verify uses.

A task is a small object (nanochat style) that every stage reuses; the protocol it follows is
written out in tasks/base.py:
  - the data stage calls `generate(rng, n_steps)` (generated families) or `load()` (importers),
  - the evaluator and the chat REPL call `check(example, steps, answer)` on model output,
  - training/eval may call `reward(example, completion)`.

Problems are `reasonlm.example.Example`s; `meta` holds whatever the checker needs beyond the
question. Adding a family touches its own file plus one line in `TASKS` below.
"""
from __future__ import annotations

from reasonlm.example import Example
from reasonlm.tasks import arithmetic, gsm8k, linear_equations, object_swaps, reasoning_gym, word_problems
from reasonlm.tasks.base import Check, Family, Importer, Task, is_importer

# In the order /verify tries the generated families on a question: word_problems reads almost any
# question with a number in it, so it comes after every family with a stricter question format.
TASKS: dict[str, type] = {
    "arithmetic": arithmetic.ArithmeticChain,
    "arithmetic_step": arithmetic.ArithmeticStep,  # one step of a long expression (base corpus)
    "linear_equations": linear_equations.LinearEquations,
    "object_swaps": object_swaps.ObjectSwaps,
    "word_problems": word_problems.WordProblems,
    "gsm8k": gsm8k.GSM8K,  # importer
    "reasoning_gym": reasoning_gym.ReasoningGym,  # importer, optional extra reasonlm[gym]
}


def get_task(family: str, /, **knobs) -> Task:
    """The task object for a family name, configured with its knobs. `family` is positional-only,
    so a family may have a knob called `family` or `name` (reasoning_gym's):
    get_task("reasoning_gym", name="chain_sum")."""
    if family not in TASKS:
        raise ValueError(f"unknown task family {family!r}; known: {', '.join(known_tasks())}")
    try:
        return TASKS[family](**knobs)
    except TypeError as e:
        raise ValueError(f"bad settings for task {family!r}: {e}") from None


def known_tasks() -> list[str]:
    return sorted(TASKS)


def question_families() -> list[str]:
    """The generated families, in the order `parse_any_question` tries them."""
    return [name for name, cls in TASKS.items() if not cls.imported]


def parse_any_question(question: str) -> tuple[Family, Example] | None:
    """(task, checkable example) from the first generated family that reads the question, else None.
    The tasks have default knobs: a checker takes what it needs from the example."""
    for family in question_families():
        task = TASKS[family]()
        example = task.parse_question(question)
        if example is not None:
            return task, example
    return None


__all__ = ["TASKS", "Check", "Family", "Importer", "Task", "is_importer", "get_task", "known_tasks",
           "question_families", "parse_any_question"]
