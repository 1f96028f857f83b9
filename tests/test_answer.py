"""The one renderer and the one parser: round trips, normalisation, adversarial input."""
from fractions import Fraction

from hypothesis import given, settings, strategies as st

from reasonlm import answer
from reasonlm.answer import (answers_match, format_number, lmeval_flexible, lmeval_strict, normalize_number,
                             parse_completion, render_completion)
from reasonlm.tasks import expressions
from reasonlm.tasks.expressions import check_equation, evaluate_expression
from tests.helpers import hang_guard


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


def test_parser_is_total_on_adversarial_strings():
    """None of these is an equation, an expression or a strict lm-eval answer; each is parsed at once
    (the guard fails a regex gone exponential on one of them instead of hanging)."""
    for s in ADVERSARIAL:
        with hang_guard(f"parsing {s[:20]!r}..."):
            parsed = parse_completion(s)
            assert check_equation(s) is None and evaluate_expression(s) is None, s[:20]
            assert lmeval_strict(s) == "[invalid]", s[:20]
            assert isinstance(lmeval_flexible(s), str) and isinstance(parsed.steps, list)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/()=#.,$ \nabc<>")), max_size=300))
def test_parser_never_raises(s):
    p = parse_completion(s)
    assert isinstance(p.steps, list)
    check_equation(s)
    evaluate_expression(s)
    normalize_number(s)
    answers_match(p.answer, "1")


# --- the exact-int fast path: int leaves where no division or decimal is involved ------------
def _fraction_value(node):
    """Reference evaluator: every leaf as a Fraction, as the parser produced before the int path."""
    if not isinstance(node, tuple):
        return Fraction(node)
    op, a, b = node
    a, b = _fraction_value(a), _fraction_value(b)
    if a is None or b is None or (op == "/" and b == 0):
        return None
    return {"+": a + b, "-": a - b, "*": a * b}[op] if op != "/" else a / b


_numbers = st.integers(0, 10**12).map(str) | st.decimals(0, 1000, places=2, allow_nan=False).map(str)
_exprs = st.recursive(_numbers, lambda inner: st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "*-", "--"]), inner)
                      .map(lambda t: f"({t[0]}{t[1]}{t[2]})"), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(_exprs)
def test_int_leaves_agree_with_fraction_arithmetic(text):
    tree = expressions.parse_expression(text)
    assert tree is not None
    value = expressions.tree_value(tree)
    assert value == _fraction_value(tree)  # None (division by zero) in both, or the same exact value
    if "/" not in text and "." not in text:
        assert type(value) is int  # ints stay ints: no Fraction unless a division or a decimal needs one
    if value is not None:
        assert format_number(value) == format_number(Fraction(value))
        assert answers_match(format_number(value), format_number(Fraction(value)))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/. ")), max_size=12))
def test_short_cuts_of_the_parser_agree_with_the_full_parse(s):
    # '(s)' never takes the bare-number / 'a op b' short cuts, so it is the general parser's answer
    assert expressions.parse_expression(s) == expressions.parse_expression(f"({s})")


def test_leaf_types():
    assert expressions.parse_expression("12") == 12 and type(expressions.parse_expression("12")) is int
    assert type(expressions.parse_expression("2.5")) is Fraction and expressions.parse_expression("-3") == -3
    assert expressions.parse_expression("3*4") == ("*", 3, 4) and expressions.parse_expression("-(1+2)") == ("-", 0, ("+", 1, 2))
    assert evaluate_expression("8/4") == 2 and type(evaluate_expression("8/4")) is int
    assert evaluate_expression("2.5*2") == 5 and format_number(evaluate_expression("2.5*2")) == "5"
    assert expressions.parse_expression("+") is None and expressions.parse_expression("3 4") is None
