"""The task protocol: what a task family provides, and the verdict its checker returns.

There are two kinds of task. A task class subclasses the one it is, which sets the class
attribute `imported` that tells them apart (`is_importer`):

  A generated family (`Family`, imported = False) makes problems:
      generate(rng, n_steps) -> Example     one problem needing exactly n_steps steps
      check(example, steps, answer) -> Check
      problem_text(question) -> str         the problem a wrapped question asks about (what
                                            decontamination compares); given: the question
      parse_question(question) -> Example | None
                                            a checkable Example rebuilt from a question a
                                            person typed (chat's /verify); None when the
                                            question does not look like this family's
  An importer (`Importer`, imported = True) reads problems someone else wrote:
      load() -> (list[Example], report)     the report counts what was read, kept and
                                            rejected by kind (REJECTIONS)
      check                                 as above
      on_error                              a constructor knob of every importer: 'skip'
                                            drops and counts a malformed record, 'raise'
                                            stops with a ValueError naming where it is

What a checker can judge without the gold answer (`gold_free(example)`, checker-guided search,
reasonlm/search.py): 'steps' (the steps from the question and `meta` alone: the generated
families), 'calculator' (every `a op b = c` in a line must be true: worked GSM8K-style
solutions), 'answer' (nothing: answer-only records). A generated family says 'steps', an
importer 'answer', unless it says otherwise.

Every task has a `name` (its family name in recipes and in Example.family) and a `license`;
a generated family also has a `version`, raised when the same seed and knobs start to draw
different problems. The two base classes are Protocols: they say what a task must provide, and
give the method every generated family shares (problem_text); nothing else is inherited. What a
completion earns is not the task's to say: the task judges (`check`), and eval, RL, chat and
training read that verdict through reasonlm/verdict.py.

The checker's contract: `check` reads everything it needs from the example (its question and
`meta`), never from the task's knobs. Eval and chat score with a task built with default knobs
(`get_task(example.family)`), so a checker that read its knobs would judge problems made with
other knobs wrongly; tests/test_tasks_families.py checks every family that way.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from reasonlm.example import Example

GOLD_FREE = ("steps", "calculator", "answer")  # what a checker judges without the gold (module docstring)
REJECTIONS = ("bad_annotation", "final_mismatch", "malformed")  # why an importer drops a record
ON_ERROR = ("skip", "raise")


@dataclass
class Check:
    """The verdict on one solution (gold or generated)."""
    answer_correct: bool
    step_ok: list[bool] = field(default_factory=list)  # one per step, in order
    first_bad_step: int | None = None  # 1-based index of the first wrong step, None if none
    chain_valid: bool = False  # every step right and the chain reaches the final answer
    steps_checkable: bool = True  # False: an answer-only verdict (nothing to check steps against);
    # step_ok is then empty and chain_valid False, and eval reports no step metrics for it

    @property
    def right_answer_wrong_chain(self) -> bool:
        return self.steps_checkable and self.answer_correct and not self.chain_valid

    @property
    def accepted(self) -> bool:
        """Everything that can be checked is right: a valid chain, or the right answer when the
        steps are not checkable."""
        return self.chain_valid if self.steps_checkable else self.answer_correct


class Family(Protocol):
    """A generated task family (see the module docstring)."""
    imported: ClassVar[bool] = False
    name: ClassVar[str]
    version: ClassVar[int]
    license: ClassVar[str]

    def generate(self, rng: random.Random, n_steps: int) -> Example: ...
    def check(self, example: Example, steps: Sequence[str], answer: str | None) -> Check: ...
    def parse_question(self, question: str) -> Example | None: ...

    def problem_text(self, question: str) -> str:
        return question

    def gold_free(self, example: Example) -> str:
        """'steps': check() judges steps from the question and meta alone (see GOLD_FREE)."""
        return "steps"


class Importer(Protocol):
    """A task that reads problems written elsewhere (see the module docstring)."""
    imported: ClassVar[bool] = True
    name: ClassVar[str]
    license: ClassVar[str]
    on_error: str  # 'skip' or 'raise' (ON_ERROR)

    def load(self) -> tuple[list[Example], dict]: ...
    def check(self, example: Example, steps: Sequence[str], answer: str | None) -> Check: ...

    def gold_free(self, example: Example) -> str:
        """'answer': nothing to judge without the gold, unless the importer says otherwise (GOLD_FREE)."""
        return "answer"


Task = Family | Importer


def is_importer(task: Task) -> bool:
    """An importer reads records (`load`); a generated family makes them (`generate`)."""
    return task.imported


class Rejected(Exception):
    """A record an importer does not keep: `kind` is one of REJECTIONS, `why` says what is wrong."""

    def __init__(self, kind: str, why: str):
        super().__init__(why)
        self.kind, self.why = kind, why


def new_load_report() -> dict:
    """The report an importer's load() returns, before any record is read."""
    return {"read": 0, "kept": 0, "rejected": {kind: 0 for kind in REJECTIONS}}


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    return on_error


# --- turning per-step verdicts into a Check ----------------------------------------------------
def finish_check(answer_correct: bool, step_ok: list[bool], complete: bool) -> Check:
    """Shared bookkeeping: first bad step and chain validity from per-step verdicts."""
    first_bad = None if all(step_ok) else next(i + 1 for i, ok in enumerate(step_ok) if not ok)
    chain_valid = first_bad is None and complete and answer_correct
    return Check(answer_correct, step_ok, first_bad, chain_valid)
