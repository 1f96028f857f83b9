"""The verdict on one completion: what every stage that judges a model's answer calls.

    v = judge(task, example, text)                   # parsed lines + the task checker's Check
    v = judge(task, example, text, catch=True)       # a checker error comes back in v.error
    answer_right(v.parsed, example)                  # the final-answer verdict alone

Eval's scoring (evaluate/scoring.py), RL's reward (credit.score), chat's /verify and training's
periodic accuracy check all judge through here, so a completion means the same everywhere: the
text is parsed once (answer.parse_completion: the step lines, the '#### N' answer, the last
number), and the task's checker (`task.check`) judges the steps and the answer.

A checker error is an exception raised by the task's checker. It says nothing about the model's
answer: the checker could not judge it. Two callers, two uses, one meaning:
  - eval (catch=True) records it, as `checker_error` in the sample, and counts the steps as
    unchecked: one broken problem must not end a long eval, and the report shows it;
  - RL (catch=False, the default) stops: a reward that cannot be computed must not quietly pay 0
    and steer the training. Chat's /verify and training's check do not catch it either.
`answer_right` compares the parsed final answer with the gold one (answers_match) without the
checker; eval's `correct` and training's `val_accuracy` are that comparison.
"""
from __future__ import annotations

from dataclasses import dataclass

from reasonlm.answer import Parsed, answers_match, parse_completion
from reasonlm.example import Example
from reasonlm.tasks.base import Check


@dataclass
class Verdict:
    """One completion judged: its parsed lines and the checker's Check, or the checker's error."""
    parsed: Parsed
    check: Check | None  # None when the checker raised (only with catch=True)
    error: str | None = None  # the checker error, 'Type: message' cut to 200 characters

    @property
    def valid_prefix(self) -> list[int]:
        """Per step, 1 while every step so far is right, then 0 from the first wrong step on."""
        ok, alive = [], True
        for step_ok in self.check.step_ok:
            alive = alive and bool(step_ok)
            ok.append(int(alive))
        return ok


def judge(task, example: Example, text: str, catch: bool = False) -> Verdict:
    """The task checker's verdict on the completion `text` to `example`. A checker error (see the
    module docstring) propagates, or with `catch` comes back as Verdict.error (check None)."""
    parsed = parse_completion(text)
    try:
        check = check_solution(task, example, parsed.steps, parsed.answer)
    except Exception as e:  # the checker's own bug: recorded by the caller that asked to catch it
        if not catch:
            raise
        return Verdict(parsed, None, f"{type(e).__name__}: {e}"[:200])
    return Verdict(parsed, check)


def check_solution(task, example: Example, steps: list[str], answer: str | None) -> Check:
    """The task's verdict on a solution given as lines (a gold one, say): the one call of
    `task.check`."""
    return task.check(example, steps, answer)


def answer_right(parsed: Parsed, example: Example) -> bool:
    """Whether the parsed final answer is the gold one (no checker involved)."""
    return answers_match(parsed.answer, example.answer)
