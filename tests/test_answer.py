"""The one renderer and the one parser: round trips, normalisation, adversarial input."""
import time
from fractions import Fraction

from hypothesis import given, settings, strategies as st

from reasonlm import answer
from reasonlm.answer import (answers_match, check_equation, evaluate_expression, format_number, lmeval_flexible,
                             lmeval_strict, normalize_number, parse_completion, render_completion)


def test_render_then_parse_round_trip():
    text = render_completion(["8+1=9", "9-5=4"], "4")
    assert text == "8+1=9\n9-5=4\n#### 4"
    p = parse_completion(text)
    assert p.steps == ["8+1=9", "9-5=4"] and p.answer == "4" and p.flexible == "4"


def test_direct_answer_has_no_steps():
    p = parse_completion(render_completion([], "7"))
    assert p.steps == [] and p.answer == "7"


def test_missing_final_line_is_an_extraction_failure_not_a_wrong_answer():
    p = parse_completion("8+1=9\n9-5=4")
    assert p.answer is None and p.flexible == "4"


def test_first_final_line_wins():
    assert parse_completion("1+1=2\n#### 2\n#### 5").answer == "2"


def test_number_normalisation():
    assert normalize_number("1,234") == 1234
    assert normalize_number("$12.") == 12
    assert normalize_number("12.0") == normalize_number("12")
    assert normalize_number("3/4") == Fraction(3, 4)
    assert normalize_number("-0.50") == Fraction(-1, 2)
    assert normalize_number("abc") is None and normalize_number("1/0") is None
    assert answers_match("12.0", "12") and answers_match("$1,000", "1000") and not answers_match("13", "12")
    assert answers_match("Alice", "alice") and not answers_match(None, "1")


def test_format_number_is_canonical():
    assert format_number(Fraction(12)) == "12"
    assert format_number(Fraction(5, 2)) == "2.5"
    assert format_number(Fraction(1, 3)) == "1/3"
    assert format_number(Fraction(-7, 4)) == "-1.75"


def test_expression_evaluator_follows_precedence_and_never_evals():
    assert evaluate_expression("2+3*4") == 14
    assert evaluate_expression("(2+3)*4") == 20
    assert evaluate_expression("8--39") == 47
    assert evaluate_expression("7/2") == Fraction(7, 2)
    assert evaluate_expression("1/0") is None
    assert evaluate_expression("__import__('os')") is None
    assert evaluate_expression("2**8") is None


def test_check_equation():
    assert check_equation("12 * 3 = 36") is True
    assert check_equation("12 * 3 = 35") is False
    assert check_equation("no equation here") is None
    assert check_equation("1=2=3") is None


def test_lmeval_regexes_match_the_harness():
    out = "She has 3 apples.\nThe total is 1,234.\n#### 1,234"
    assert lmeval_strict(out) == "1,234"
    assert lmeval_flexible(out) == "1,234"
    assert lmeval_strict("the answer is 5") == "[invalid]"
    assert lmeval_flexible("the answer is 5.") == "5."
    assert answer.lmeval_normalize("$1,234.") == "1234"


ADVERSARIAL = ["9" * 1_000_000, "<<" * 50_000 + ">>" * 50_000, "#### " * 20_000, "(" * 100_000 + "1",
               "1" + "+1" * 100_000, "-" * 100_000 + "1", "=" * 100_000, "1." * 100_000]


def test_parser_is_fast_and_total_on_adversarial_strings():
    for s in ADVERSARIAL:
        t0 = time.perf_counter()
        parse_completion(s)
        check_equation(s)
        evaluate_expression(s)
        lmeval_strict(s)
        lmeval_flexible(s)
        assert time.perf_counter() - t0 < 2.0, s[:20]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/()=#.,$ \nabc<>")), max_size=300))
def test_parser_never_raises(s):
    p = parse_completion(s)
    assert isinstance(p.steps, list)
    check_equation(s)
    evaluate_expression(s)
    normalize_number(s)
    answers_match(p.answer, "1")
