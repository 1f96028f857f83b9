"""One verdict on a completion (reasonlm/verdict.py): eval's scoring, RL's reward, chat's /verify
and training's check read the same thing, and a checker error means the same everywhere."""
import random
import re

import pytest

from reasonlm import credit
from reasonlm.answer import render_completion
from reasonlm.evaluate.scoring import score as eval_score
from reasonlm.tasks import get_task, question_families
from reasonlm.verdict import answer_right, judge, judge_question


def completions(ex):
    """A right chain, a wrong step with the right answer, a wrong answer, no answer line, prose."""
    wrong_step = [ex.steps[0] + "1", *ex.steps[1:]]
    return [render_completion(ex.steps, ex.answer), render_completion(wrong_step, ex.answer),
            render_completion(ex.steps, str(int(ex.answer) + 1)), "\n".join(ex.steps), "I do not know."]


@pytest.mark.parametrize("seed", range(4))
def test_eval_rl_and_chat_give_one_verdict(seed):
    task = get_task("arithmetic")
    ex = task.generate(random.Random(seed), 3)
    for text in completions(ex):
        v = judge(task, ex, text)
        graded, rollout = eval_score(ex, text, task), credit.score(task, ex, text, truncated=False)
        assert graded["correct"] == rollout.correct == v.check.answer_correct == answer_right(v.parsed, ex)
        assert graded["chain_valid"] == rollout.valid == v.check.chain_valid
        assert graded["steps_ok"] == sum(v.check.step_ok) and rollout.ok == v.valid_prefix
        assert graded["first_bad_step"] == v.check.first_bad_step
        assert rollout.reward == float(v.check.answer_correct)
        family, _, asked = judge_question(ex.question, text)
        assert family == task.name and asked.parsed == v.parsed and asked.check == v.check
    assert [judge(task, ex, t).check.chain_valid for t in completions(ex)] == [True, False, False, False, False]


class Broken:
    """A checker with a bug: it raises on every solution."""
    name, imported = "broken", False

    def check(self, example, steps, answer):
        raise KeyError("meta")


def test_a_checker_error_is_recorded_by_eval_and_stops_rl():
    ex = get_task("arithmetic").generate(random.Random(0), 2)
    text = render_completion(ex.steps, ex.answer)
    v = judge(Broken(), ex, text, catch=True)
    assert v.check is None and v.error == "KeyError: 'meta'" and v.parsed.answer == ex.answer
    graded = eval_score(ex, text, Broken())
    assert graded["checker_error"] == "KeyError: 'meta'" and graded["correct"] and not graded["chain_valid"]
    with pytest.raises(KeyError):
        judge(Broken(), ex, text)
    with pytest.raises(KeyError):
        credit.score(Broken(), ex, text, truncated=False)


def test_judge_question_reads_every_generated_family():
    """chat's /verify and serve: each family's generated question is recognised and its gold solution checks out; a wrong
    step is marked where it is (word problems, whose true answer is unknown, included)."""
    for name in question_families():
        task, rng = get_task(name), random.Random(0)
        for i in range(20):
            ex = task.generate(rng, 1 if name == "arithmetic_step" else rng.randint(1, 3))
            family, example, verdict = judge_question(ex.question, render_completion(ex.steps, ex.answer))
            check = verdict.check
            assert family == name and check.chain_valid, ex
            assert example.answer in (ex.answer, "")
            if name != "object_swaps":  # a number one off in the first step
                first = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), ex.steps[0], count=1)
                verdict = judge_question(ex.question, render_completion([first, *ex.steps[1:]], ex.answer))[2]
                assert verdict.check.first_bad_step == 1, (ex, first)
    assert judge_question("hello there", "#### 1") is None
