import dataclasses
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reasonlm.evaluate.metrics import summarize
from reasonlm.evaluate.scoring import score
from reasonlm.example import Example
from reasonlm.tasks import get_task
from tests.helpers import hang_guard


ROW = Example.from_row({"id": "a", "family": "arithmetic", "question": "8+1-5", "steps": ["8+1=9", "9-5=4"], "answer": "4",
       "n_steps": 2, "meta": "{}"})


def test_score_verdicts():
    s = score(ROW, "8+1=9\n9-5=4\n#### 4")
    assert s["correct"] and s["chain_valid"] and s["steps_ok"] == 2 and s["first_bad_step"] is None
    s = score(ROW, "8+1=10\n10-5=4\n#### 4")  # right answer through a wrong chain
    assert s["correct"] and s["right_answer_wrong_chain"] and s["first_bad_step"] == 1 and not s["chain_valid"]
    s = score(ROW, "8+1=9\n9-5=3\n#### 3")
    assert not s["correct"] and s["first_bad_step"] == 2 and s["steps_ok"] == 1
    s = score(ROW, "8+1=9\nso it is 4")  # no final-answer line: an extraction failure
    assert s["extraction_failed"] and not s["correct"] and s["flexible_correct"] and s["answer"] is None
    s = score(ROW, "")
    assert s["extraction_failed"] and s["steps_total"] == 0


def test_score_survives_a_broken_checker():
    class Broken:
        def check(self, *a):
            raise RuntimeError("boom")
    s = score(ROW, "#### 4", task=Broken())
    assert s["correct"] and "boom" in s["checker_error"] and s["steps_total"] == 0
    summary = summarize([{**s, "id": "a", "n_steps": 2, "family": "arithmetic", "gold": "4"}])
    assert summary["checker_errors"] == 1


GSM_ROW = Example.from_row({"id": "g", "family": "gsm8k", "question": "q", "steps": ["She has 3+4=7 apples."], "answer": "7",
           "n_steps": 1, "meta": "{}"})
WORD_ROW = None


def _word_row():
    ex = get_task("word_problems").generate(random.Random(0), 3)
    return dataclasses.replace(ex, id="w")


ADVERSARIAL = st.one_of(
    st.text(max_size=400),
    st.text(alphabet="0123456789+-*/=().,$# \n×÷", max_size=600),
    st.lists(st.sampled_from(["####", " ", "\n", "9", "99999999999999999999999", "(", ")", "=", "+", "/0",
                              "<<1+1=2>>", "$", ",", ".", "-", "x", "=" * 50, "(" * 30]), max_size=200).map("".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ADVERSARIAL)
def test_score_never_raises_and_is_consistent(text):
    global WORD_ROW
    WORD_ROW = WORD_ROW or _word_row()
    for row in (ROW, GSM_ROW, WORD_ROW):
        with hang_guard(f"scoring {text[:40]!r}"):
            s = score(row, text, lmeval=True)
        assert "checker_error" not in s, s["checker_error"]
        assert isinstance(s["correct"], bool) and s["steps_ok"] <= s["steps_total"]
        assert s["extraction_failed"] == (s["answer"] is None)


# --- lm-evaluation-harness agreement ---------------------------------------------------------
# lm-eval's gsm8k filters and metric, re-implemented here from its task YAML and RegexFilter:
# strict-match: regex "#### (\-?[0-9\.\,]+)", group_select 0; flexible-extract: regex
# "(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select -1; fallback "[invalid]"; exact_match with
# ignore_case and regexes_to_ignore [",", "\$", "(?s).*#### ", "\.$"].
def lmeval_filter(resp, pattern, group_select):
    match = re.compile(pattern).findall(resp)
    if not match:
        return "[invalid]"
    match = match[group_select]
    if isinstance(match, tuple):
        match = [m for m in match if m]
        match = match[0] if match else "[invalid]"
    return match.strip()


def lmeval_exact_match(pred, gold):
    for r in [",", "\\$", "(?s).*#### ", "\\.$"]:
        pred, gold = re.sub(r, "", pred), re.sub(r, "", gold)
    return pred.lower() == gold.lower()


# (model output, gold final answer): what small models actually write, and the corner cases
LMEVAL_CORPUS = [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 72", "72"),
    ("She has 3 + 4 = 7 apples.\n#### 7.", "7"),
    ("The notebooks cost 4*2.5 = $10.\nShe spends 10+1.25 = $11.25 in total.\n#### $11.25", "11.25"),
    ("He pays 1,200 + 350 = 1,550 dollars.\n#### 1,550", "1550"),
    ("#### -5", "-5"),
    ("First 6*14=84\n#### 84\n#### 93", "93"),
    ("I don't know.", "5"),
    ("The total is 1,000,000 dollars.", "1000000"),
    ("It takes 350/100 = 3.5 hours", "3.5"),
    ("Answer: 42", "42"),
    ("The answer is 18.\n\nQuestion: Tom has 5 apples.", "18"),
    ("####72", "72"),
    ("#### 72 apples", "72"),
    ("Half of 10 is 1/2 * 10 = 5", "5"),
    ("The price is $5.", "5"),
    ("Total: 3.0", "3"),
    ("It is -7 degrees outside.", "-7"),
    ("The numbers are 2, 3, and 4", "4"),
    ("It costs 1,200,", "1200"),
    ("", "0"),
    ("#### 5\n#### 6", "5"),
    ("The answer is 0.5", "0.5"),
    ("He has 10 - 3 = 7 apples left. #### 7", "7"),
    ("Das Ergebnis ist 4 €.", "4"),
    ("12*3=36\n36-4=32\n#### 32", "32"),
    ("### 5", "5"),
    ("#### .5", "0.5"),
    ("#### 1,5", "15"),
    ("She lost money: the answer is -$3", "-3"),
    ("Answer:\n\n#### 100\n\nThe answer is 100 because 50+50=100.", "100"),
    ("so she pays 2.50 + 1.25 = $3.75.\n#### 3.75", "3.75"),
    ("#### 3.75\n", "3.75"),
    # lm-eval drops ONE trailing '.' ("\.$"), so '42...' is wrong there and must be wrong here too.
    ("The answer is 42...", "42"),
]


@pytest.mark.parametrize("output,gold", LMEVAL_CORPUS)
def test_lmeval_extraction_agrees_with_the_harness(output, gold):
    from reasonlm.answer import lmeval_flexible, lmeval_strict
    strict = lmeval_filter(output, r"#### (\-?[0-9\.\,]+)", 0)
    flexible = lmeval_filter(output, r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1)
    assert lmeval_strict(output) == strict
    assert lmeval_flexible(output) == flexible
    gold_text = f"Some reasoning <<1+1=2>>2.\n#### {gold}"  # lm-eval compares with the whole answer field
    s = score(dataclasses.replace(GSM_ROW, answer=gold), output, lmeval=True)
    assert s["lmeval_strict_correct"] == lmeval_exact_match(strict, gold_text)
    assert s["lmeval_flexible_correct"] == lmeval_exact_match(flexible, gold_text)
