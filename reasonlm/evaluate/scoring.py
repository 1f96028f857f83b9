"""Scoring one completion: everything we measure about one generated solution.

The strict answer (the '#### N' line), the flexible one (the last number), an extraction failure
when there is no final-answer line, the task checker's verdict on every step (step accuracy, a
fully valid chain, the position of the first wrong step, a right answer reached through a wrong
chain), and for GSM8K-format sources lm-evaluation-harness's strict-match and flexible-extract.
A problem whose task cannot check steps (an answer-only record) gets `steps_checkable: False`
and no chain verdicts.
"""
from __future__ import annotations

from reasonlm.answer import answers_match, lmeval_flexible, lmeval_normalize, lmeval_strict, parse_completion
from reasonlm.example import Example
from reasonlm.sources import task_for
from reasonlm.verdict import Verdict, answer_right, judge


def score(example: Example, output: str, task=None, lmeval: bool = False) -> dict:
    """Every verdict on one generated solution (reasonlm/verdict.py). Never raises on model
    output: a checker error is recorded in `checker_error` and the steps count as unchecked.
    `task` defaults to the example's family."""
    output = output if isinstance(output, str) else ""
    try:
        verdict = judge(task or task_for(example.family), example, output, catch=True)
    except Exception as e:  # no checker for the family: recorded like a checker error
        verdict = Verdict(parse_completion(output), None, f"{type(e).__name__}: {e}"[:200])
    parsed, check, gold = verdict.parsed, verdict.check, example.answer
    correct = answer_right(parsed, example)
    out = {"correct": correct, "flexible_correct": answers_match(parsed.flexible, gold),
           "extraction_failed": parsed.answer is None, "answer": parsed.answer, "flexible": parsed.flexible}
    if verdict.error is not None:  # a checker bug must not end a long eval; it is counted and shown
        out.update(steps_total=0, steps_ok=0, chain_valid=False, first_bad_step=None,
                   right_answer_wrong_chain=correct, checker_error=verdict.error)
    elif check.steps_checkable:
        out.update(steps_total=len(check.step_ok), steps_ok=sum(map(bool, check.step_ok)),
                   chain_valid=bool(check.chain_valid), first_bad_step=check.first_bad_step,
                   right_answer_wrong_chain=bool(check.right_answer_wrong_chain))
    else:  # an answer-only problem: no step verdicts, and no chain metrics rather than zeros
        out.update(steps_checkable=False, steps_total=0, steps_ok=0, first_bad_step=None)
    if lmeval:
        strict, flexible = lmeval_strict(output), lmeval_flexible(output)
        out.update(lmeval_strict=strict, lmeval_flexible=flexible,
                   lmeval_strict_correct=lmeval_normalize(strict) == lmeval_normalize(gold),
                   lmeval_flexible_correct=lmeval_normalize(flexible) == lmeval_normalize(gold))
    return out
