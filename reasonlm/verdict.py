"""The verdict on one completion: what every stage that judges a model's answer calls.

    v = judge(task, example, text)                   # parsed lines + the task checker's Check
    v = judge(task, example, text, catch=True)       # a checker error comes back in v.error
    answer_right(v.parsed, example)                  # the final-answer verdict alone
    found = judge_question(question, text)           # (family, example, Verdict) from the question alone
    line = judge_lines(checker, text, final)         # a search's verdict on the finished lines so far

Eval's scoring (evaluate/scoring.py), RL's reward (credit.score), chat's /verify, serve's step
verdict, search's line checks and training's periodic accuracy check all judge through here, so a completion means the same everywhere: the
text is parsed once (answer.parse_completion: the step lines, the '#### N' answer, the last
number), and the task's checker (`task.check`) judges the steps and the answer.

A checker error is an exception raised by the task's checker. It says nothing about the model's
answer: the checker could not judge it. Two callers, two uses, one meaning:
  - eval (catch=True) records it, as `checker_error` in the sample, and counts the steps as
    unchecked: one broken problem must not end a long eval, and the report shows it;
  - RL (catch=False, the default) stops: a reward that cannot be computed must not quietly pay 0
    and steer the training. Chat's /verify, serve and training's check do not catch it either;
  - search (judge_lines) lets the line pass unjudged, as eval counts such steps unchecked: a search
    must not end, or throw a line away, over a checker's bug, and the answer it keeps is judged
    again by eval's scoring, which records the error as `checker_error`.
Without the gold answer (judge_question, search's checkers: a question a person typed, a search
that must not see the gold), the chain is checked against the model's own final answer
(`own_answer`), so chain_valid still means "every step is right and the steps lead to the final
answer".
`answer_right` compares the parsed final answer with the gold one (answers_match) without the
checker; eval's `correct` and training's `val_accuracy` are that comparison.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from reasonlm.answer import Parsed, answers_match, parse_completion
from reasonlm.example import Example
from reasonlm.tasks import parse_any_question
from reasonlm.tasks.base import Check

Checker = Callable[[list, "str | None"], Check]
"""(steps, final answer or None) -> the verdict, judged without the gold answer (search's checkers)."""


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


def own_answer(example: Example, answer: str | None) -> Example:
    """`example` judged against the model's own final `answer` (none: '') instead of a gold one."""
    return replace(example, answer=answer or "")


def judge_question(question: str, text: str) -> tuple[str, Example, Verdict] | None:
    """(family, example, Verdict) for an answer to a question a person typed (chat's /verify,
    serve), or None when no task family reads the question. The example is the one read from the
    question; a family whose question does not give the true answer (example.answer '') is judged
    against the model's own answer."""
    found = parse_any_question(question)
    if found is None:
        return None
    task, example = found
    reference = example if example.answer else own_answer(example, parse_completion(text).answer)
    return task.name, example, judge(task, reference, text)


@dataclass
class LineVerdict:
    """A search's verdict on the finished lines of an answer so far."""
    ok: bool  # keep the last line
    valid: int  # leading valid steps
    chain_valid: bool
    why: str = ""  # why the last line is rejected


def judge_lines(checker: Checker, text: str, final: bool) -> LineVerdict:
    """The checker's verdict on the finished lines of `text` (all of it when `final`). A checker
    error lets the line pass unjudged (the module docstring)."""
    body = text if final else text[:text.rfind("\n") + 1]
    parsed = parse_completion(body)
    try:
        check = checker(parsed.steps, parsed.answer)
    except Exception as e:  # the checker's own bug: the line passes unjudged
        return LineVerdict(True, 0, False, f"checker error {type(e).__name__}")
    valid = next((i for i, ok in enumerate(check.step_ok) if not ok), len(check.step_ok))
    if valid < len(parsed.steps):
        return LineVerdict(False, valid, False, f"step {valid + 1} is wrong")
    if parsed.answer is not None:
        return LineVerdict(check.chain_valid, valid, check.chain_valid,
                           "" if check.chain_valid else "the steps do not lead to the final answer")
    if final:
        return LineVerdict(False, valid, False, "no final answer")
    return LineVerdict(True, valid, False)
