"""Generated task families: every gold solution passes its own checker, a corrupted step or answer
fails it where the corruption is, generation is deterministic, and bad knobs are refused."""
import json
import random
import re

import pytest
from hypothesis import given, settings, strategies as st

from reasonlm.answer import format_number, normalize_number, render_completion
from reasonlm.tasks.expressions import parse_expression
from reasonlm.example import Example
from reasonlm.tasks import TASKS, get_task, is_importer, known_tasks, parse_any_question, question_families
from reasonlm.tasks.arithmetic import ArithmeticChain, next_ops_steps, pending_ops, rewrite_steps
from reasonlm.tasks.linear_equations import LinearEquations, parse_equation, solve
from reasonlm.tasks.object_swaps import ObjectSwaps
from reasonlm.tasks.word_problem_templates import BASES, STAGES
from reasonlm.tasks.word_problems import EQUATION_RE, WordProblems
from reasonlm.verdict import judge

# family -> (task, n_steps it must support)
FAMILIES = {
    "arithmetic": (ArithmeticChain(digits=[1, 2]), range(1, 9)),
    "arithmetic_mod": (ArithmeticChain(digits=1, ops="+-*", modulus=10), range(1, 9)),
    "arithmetic_nontrivial": (ArithmeticChain(digits=1, ops="+-*", min_value=0, max_value=99, trivial_ops=False,
                                              distinct_ops=True), range(1, 9)),
    "arithmetic_rewrite": (ArithmeticChain(digits=[1, 2], ops="+-*/", group_prob=0.3, step_format="rewrite"),
                           range(1, 9)),
    "arithmetic_next": (ArithmeticChain(digits=[1, 2], ops="+-*/", step_format="equation+next", next_ops=3),
                        range(1, 9)),
    "word_problems": (WordProblems(distractors=0.5), range(1, 9)),
    "word_problems_big": (WordProblems(max_number=1000), range(1, 9)),
    "linear_equations": (LinearEquations(), range(1, 10)),
    "linear_equations_neg": (LinearEquations(negatives=True, max_coef=20), range(1, 10)),
    "object_swaps": (ObjectSwaps(people=[2, 6]), range(1, 11)),
}
NUMBER_RE = re.compile(r"\d+")
SETTINGS = settings(max_examples=40, deadline=None)


def _example(family, seed, n_index):
    task, steps = FAMILIES[family]
    n = steps[n_index % len(steps)]
    return task, task.generate(random.Random(seed), n), n


def _bump_number(text: str, which: int, span=None) -> str:
    """Add 1 to one number of `text` (inside `span` if given)."""
    lo, hi = span or (0, len(text))
    matches = [m for m in NUMBER_RE.finditer(text) if lo <= m.start() and m.end() <= hi]
    m = matches[which % len(matches)]
    return text[:m.start()] + str(int(m.group()) + 1) + text[m.end():]


def _corrupt_step(family: str, text: str, which: int) -> str:
    if family == "object_swaps":  # exchange what two people hold: a different state, same format
        head, state = text.split(": ", 1)
        pairs = [p.split("=") for p in state.split(", ")]
        i = which % len(pairs)
        j = (i + 1) % len(pairs)
        pairs[i][1], pairs[j][1] = pairs[j][1], pairs[i][1]
        return head + ": " + ", ".join(f"{a}={b}" for a, b in pairs)
    if family.startswith("word_problems"):  # a number inside the equation (prose may repeat numbers)
        m = EQUATION_RE.search(text)
        return _bump_number(text, which, m.span())
    return _bump_number(text, which)


def _wrong_answer(example: Example) -> str:
    value = normalize_number(example.answer)
    if value is not None:
        return format_number(value + 1)
    return next(p for p in example.meta["people"] if p != example.answer)


@pytest.mark.parametrize("family", list(FAMILIES))
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n_index=st.integers(0, 20))
def test_gold_solution_passes(family, seed, n_index):
    task, ex, n = _example(family, seed, n_index)
    assert isinstance(ex, Example) and ex.family == task.name and isinstance(ex.steps, tuple)
    assert ex.n_steps == n == len(ex.steps)
    assert Example.from_row(json.loads(json.dumps(ex.to_row()))) == ex  # a row and back, meta included
    check = task.check(ex, ex.steps, ex.answer)
    assert check.answer_correct and check.chain_valid, (ex, check)
    assert check.step_ok == [True] * n and check.first_bad_step is None
    assert judge(task, ex, render_completion(ex.steps, ex.answer)).check.accepted


@pytest.mark.parametrize("family", list(FAMILIES))
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n_index=st.integers(0, 20), pick=st.integers(0, 1000))
def test_corrupted_step_fails_where_it_is(family, seed, n_index, pick):
    task, ex, n = _example(family, seed, n_index)
    i = pick % n
    steps = list(ex.steps)
    steps[i] = _corrupt_step(family, steps[i], pick // n)
    check = task.check(ex, steps, ex.answer)
    assert not check.chain_valid, (steps, ex)
    assert check.first_bad_step == i + 1, (i, steps, check)
    assert check.answer_correct and check.right_answer_wrong_chain
    assert judge(task, ex, render_completion(steps, ex.answer)).check.first_bad_step == i + 1


@pytest.mark.parametrize("family", list(FAMILIES))
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n_index=st.integers(0, 20))
def test_corrupted_answer_fails(family, seed, n_index):
    task, ex, _ = _example(family, seed, n_index)
    check = task.check(ex, ex.steps, _wrong_answer(ex))
    assert not check.answer_correct and not check.chain_valid
    assert check.first_bad_step is None  # the steps themselves are still right
    assert not judge(task, ex, render_completion(ex.steps, _wrong_answer(ex))).check.answer_correct


@pytest.mark.parametrize("family", list(FAMILIES))
def test_same_seed_same_examples(family):
    task, steps = FAMILIES[family]
    a = [task.generate(random.Random(7), n) for n in steps]
    b = [task.generate(random.Random(7), n) for n in steps]
    assert a == b
    assert a != [task.generate(random.Random(8), n) for n in steps]


@pytest.mark.parametrize("family", ["word_problems", "linear_equations", "object_swaps"])
def test_missing_and_extra_steps(family):
    task, _ = FAMILIES[family]
    ex = task.generate(random.Random(3), 4)
    assert not task.check(ex, [], ex.answer).chain_valid
    assert not task.check(ex, ex.steps, None).answer_correct
    if family == "object_swaps":  # a line per swap, no more, no fewer
        assert not task.check(ex, ex.steps[:-1], ex.answer).chain_valid
        assert task.check(ex, ex.steps + ex.steps[-1:], ex.answer).first_bad_step == 5


# --- family specifics ----------------------------------------------------------------------------
def test_no_trivial_operations_when_asked():
    """trivial_ops=False: every step changes the value, and * still appears (not starved by rejections)."""
    task, rng = ArithmeticChain(digits=1, ops="+-*", min_value=0, max_value=99, trivial_ops=False), random.Random(1)
    steps = [s for _ in range(300) for s in task.generate(rng, 6).steps]
    for step in steps:
        a, op, b, c = re.fullmatch(r"(\d+)([-+*])(\d+)=(\d+)", step).groups()
        assert a != c and not (op == "*" and "1" in (a, b)), step
    assert sum("*" in s for s in steps) > 0.15 * len(steps)


def test_distinct_ops_never_repeat_an_operation():
    task, rng = ArithmeticChain(digits=1, ops="+-*", min_value=0, max_value=99, distinct_ops=True), random.Random(2)
    for _ in range(300):
        ops = [re.fullmatch(r"\d+([-+*]\d+)=\d+", s).group(1) for s in task.generate(rng, 8).steps]
        assert len(set(ops)) == len(ops), ops


def test_word_problems_have_enough_templates():
    assert len(BASES) >= 30
    assert sum(len(v) for v in STAGES.values()) >= 20


def test_word_problems_refuse_invented_and_distractor_numbers():
    task = WordProblems(distractors=1.0)
    rng = random.Random(11)
    ex = task.generate(rng, 3)
    given = {normalize_number(g) for g in ex.meta["given"]}
    unknown = next(k for k in range(7919, 10**6) if k not in given and k + 1 not in given)
    steps = list(ex.steps)
    steps[1] = f"So {unknown}+1={unknown + 1} things."  # true, but uses a number nobody gave
    assert task.check(ex, steps, ex.answer).first_bad_step == 2
    # a distractor's number is in the question but not among the numbers a solution may use
    while True:
        numbers = {normalize_number(t) for t in re.findall(r"\d+(?:\.\d+)?", ex.question)}
        if numbers - given:
            break
        ex = task.generate(rng, 3)
        given = {normalize_number(g) for g in ex.meta["given"]}
    d, g = min(numbers - given), min(given)
    steps = [f"So {format_number(d)}+{format_number(g)}={format_number(d + g)} things.", *ex.steps[1:]]
    assert task.check(ex, steps, ex.answer).first_bad_step == 1


def test_word_problem_line_needs_an_equation():
    task = WordProblems()
    ex = task.generate(random.Random(5), 2)
    check = task.check(ex, ["I think so.", ex.steps[1]], ex.answer)
    assert check.first_bad_step == 1


def test_linear_states_any_valid_order():
    task = LinearEquations()
    ex = Example("Solve for x: 3x+7=22", "5", meta={"equation": "3x+7=22", "form": "lin"})
    assert task.check(ex, ["3x=15", "x=5"], "5").chain_valid
    assert task.check(ex, ["x+7/3=22/3", "x = 5", "3*5+7=22"], "5").chain_valid
    assert task.check(ex, ["3x=29"], "5").first_bad_step == 1
    assert task.check(ex, ["3x=15", "3*5+7=23"], "5").first_bad_step == 2
    assert task.check(ex, ["3x=15", "3*6+4=22"], "5").first_bad_step == 2  # true but not a substitution
    assert not task.check(ex, ["3x=15"], "5").chain_valid  # never reaches x=<number>


def test_linear_parser():
    assert parse_equation("2(x+3)=x*x") is None
    assert parse_equation("x/(x-1)=2") is None
    assert parse_equation("3x5=15") is None and parse_equation("3 4x=1") is None
    assert solve(parse_equation("2(x+3)=4x-2")) == 4
    assert solve(parse_equation("x-x=0")) is None
    assert solve(parse_equation("−2x=6")) == -3


def test_swaps_accept_either_name_order():
    task = ObjectSwaps()
    ex = task.generate(random.Random(2), 2)
    head, state = ex.steps[0].split(": ", 1)
    a, b = head.removeprefix("swap ").split(",")
    flipped = [f"Swap {b} , {a}:  {state}.", ex.steps[1]]
    assert task.check(ex, flipped, ex.answer.lower()).chain_valid


@pytest.mark.parametrize("family,knobs", [
    ("word_problems", {"max_number": 5}), ("word_problems", {"distractors": 1.5}),
    ("word_problems", {"max_result": 10}), ("word_problems", {"colour": "red"}),
    ("linear_equations", {"max_coef": 1}), ("linear_equations", {"max_coef": 3}),
    ("linear_equations", {"negatives": "yes"}), ("linear_equations", {"max_const": 0}),
    ("object_swaps", {"people": 1}), ("object_swaps", {"people": 11}), ("object_swaps", {"people": [4, 2]}),
])
def test_bad_knobs_are_refused(family, knobs):
    with pytest.raises(ValueError):
        get_task(family, **knobs)


@pytest.mark.parametrize("family", ["word_problems", "linear_equations", "object_swaps"])
def test_bad_n_steps_is_refused(family):
    with pytest.raises(ValueError):
        get_task(family).generate(random.Random(0), 0)


def test_linear_length_depends_on_knobs():
    assert LinearEquations(both_sides=False).max_steps == 6
    with pytest.raises(ValueError, match="both_sides"):
        LinearEquations(both_sides=False, parentheses=False).generate(random.Random(0), 6)


def test_registry_knows_every_family():
    assert {"arithmetic", "word_problems", "linear_equations", "object_swaps", "gsm8k", "reasoning_gym", "records"} <= set(known_tasks())
    assert [name for name in TASKS if is_importer(TASKS[name]())] == ["gsm8k", "reasoning_gym", "records"]
    for name, cls in TASKS.items():  # every task says its name, kind and license; families a version
        assert cls.name == name and isinstance(cls.imported, bool) and cls.license
        assert cls.imported or (isinstance(cls.version, int) and cls.version >= 1)


# --- checkers take their knobs from the example -----------------------------------------------------
# Eval and chat score with default-constructed tasks, so problems made with other knobs must be
# judged right by them: every knob a checker needs is in the question or meta.
OTHER_KNOBS = {
    "arithmetic": [{"digits": [2, 3], "ops": "+-*/", "group_prob": 0.5, "step_format": "rewrite"},
                   {"digits": 1, "ops": "+-*", "modulus": 7},
                   {"digits": 1, "ops": "+-*", "min_value": 0, "max_value": 99, "trivial_ops": False,
                    "distinct_ops": True, "step_format": "equation+rewrite"},
                   {"digits": 1, "ops": "+-*", "min_value": 0, "max_value": 99, "trivial_ops": False,
                    "step_format": "equation+next"}],
    "arithmetic_step": [{"length": [3, 20], "digits": [1, 2], "ops": "+-*", "min_value": 0, "max_value": 999,
                         "trivial_ops": False}],
    "linear_equations": [{"negatives": True, "max_coef": 30, "max_const": 50, "max_solution": 25, "both_sides": False},
                         {"parentheses": False, "max_coef": 12}],
    "object_swaps": [{"people": [5, 10]}],
    "word_problems": [{"max_number": 500, "max_result": 100000, "distractors": 1.0}],
}


@pytest.mark.parametrize("family", list(OTHER_KNOBS))
def test_a_default_task_checks_problems_made_with_other_knobs(family):
    assert set(OTHER_KNOBS) == set(question_families())  # every generated family is covered
    default = get_task(family)
    for knobs in OTHER_KNOBS[family]:
        task, rng = get_task(family, **knobs), random.Random(5)
        for i in range(40):
            n = 1 if family == "arithmetic_step" else 1 + i % 6
            ex = task.generate(rng, n)
            assert default.check(ex, ex.steps, ex.answer).chain_valid, (knobs, ex)
            steps, k = list(ex.steps), i % n
            steps[k] = _corrupt_step(family, steps[k], i)
            check = default.check(ex, steps, ex.answer)
            assert check.first_bad_step == k + 1 and not check.chain_valid, (knobs, ex, steps)


# --- reading a question back (chat's /verify) -------------------------------------------------------
@pytest.mark.parametrize("family", list(OTHER_KNOBS))
def test_parse_any_question_reads_every_family_back(family):
    """A generated question, made with default or other knobs, is read back as its own family, and
    the rebuilt example accepts the gold solution (word problems: their answer is unknown, '')."""
    for knobs in [{}] + OTHER_KNOBS[family]:
        task, rng = get_task(family, **knobs), random.Random(9)
        for i in range(20):
            ex = task.generate(rng, 1 if family == "arithmetic_step" else 1 + i % 4)
            found, rebuilt = parse_any_question(ex.question)
            assert found.name == family and rebuilt.family == family, (knobs, ex)
            assert rebuilt.answer == ("" if family == "word_problems" else ex.answer)
            reference = rebuilt if rebuilt.answer else Example(rebuilt.question, ex.answer, meta=rebuilt.meta)
            assert found.check(reference, ex.steps, ex.answer).chain_valid, (knobs, ex, rebuilt)


@pytest.mark.parametrize("question,family,answer", [
    ("What is 3+4*2?", "arithmetic", "11"), ("compute: 8+7-5 mod 10", "arithmetic", "0"),
    ("One step of 3+4*2", "arithmetic_step", "3+8"), ("Find x: 4x+8=44", "linear_equations", "9"),
    ("Alice has the red ball and Bob has the blue ball. First, Alice and Bob swap balls. Who has the red ball now?",
     "object_swaps", "Bob"),
    ("Mia has three bags of 12 apples. How many apples?", "word_problems", ""),
])
def test_parse_question_examples(question, family, answer):
    task, example = parse_any_question(question)
    assert (task.name, example.answer) == (family, answer)
    if family == "word_problems":
        assert {"3", "12", "100"} <= set(example.meta["given"])  # number words and implicit constants count


@pytest.mark.parametrize("family,question", [
    ("arithmetic", "What is 1/0?"), ("arithmetic", "Mia has 3 apples."), ("arithmetic_step", "One step of 7"),
    ("arithmetic_step", "3+4*2"), ("linear_equations", "Solve for x: x=x"), ("linear_equations", "3+4=7"),
    ("object_swaps", "Alice has the red ball. Who has the red ball now?"), ("word_problems", "hello there"),
])
def test_parse_question_refuses_other_questions(family, question):
    assert get_task(family).parse_question(question) is None


def test_parse_any_question_refuses_what_no_family_reads():
    assert parse_any_question("hello there") is None
    assert parse_any_question("Solve for x: x=x") is None


def test_arithmetic_accepts_steps_written_as_decimals_and_any_order():
    """Leaves are ints in the generator and the parser; a step written '2.0+3=5.0' (Fraction
    leaves) still names and reduces the same operation, and exact division keeps ints."""
    task = ArithmeticChain(digits=1, ops="+-*/")
    ex = Example("(8/4+3)*2-6", "4")
    assert task.check(ex, ["8/4=2", "2+3=5", "5*2=10", "10-6=4"], "4").chain_valid
    assert task.check(ex, ["8.0/4=2.0", "2+3.0=5", "5*2=10.00", "10-6=4"], "4.0").chain_valid
    assert task.check(ex, ["8/4=2", "2+3=5", "5*2=11", "11-6=5"], "4").first_bad_step == 3
    assert task.check(ex, ["8/4=2", "2+3=5", "5*2=10", "10-6=4"], "5").chain_valid is False
    mod = ArithmeticChain(digits=1, ops="+-*", modulus=10)
    ex = Example("(8+7)*3 mod 10", "5")
    assert mod.check(ex, ["8+7=5", "5*3=5"], "5").chain_valid
    assert mod.check(ex, ["8+7=15", "15*3=45"], "5").first_bad_step == 1  # results must lie in 0..m-1
    for seed in range(50):  # every value of a chain with / is an int: no Fraction leaks into the text
        gen = task.generate(random.Random(seed), 5)
        assert "/" not in gen.answer and all("." not in s for s in gen.steps)


def test_arithmetic_rewrite_steps_are_whole_expressions():
    """A rewrite step is the whole expression with one ready operation replaced by its value;
    any ready operation may go first, equation steps may be mixed in, and a line that reduces
    two operations at once, or changes the rest of the expression, is wrong."""
    task = ArithmeticChain(digits=1, ops="+-*", step_format="rewrite")
    assert rewrite_steps(parse_expression("(4*8+7)*2-5")) == ["(32+7)*2-5", "39*2-5", "78-5", "73"]
    ex = Example("(4*8+7)*2-5", "73")
    assert task.check(ex, ["(32+7)*2-5", "39*2-5", "78-5", "73"], "73").chain_valid
    assert task.check(ex, ["(32+7)*2-5", "32+7=39", "39*2=78 | 78-5", "73"], "73").chain_valid  # mixed formats
    assert task.check(ex, ["4*8=32 | (32+7)*2-6", "32+7=39"], "73").first_bad_step == 1  # a wrong rest
    assert task.check(ex, ["((32+7))*2-5", "(39)*2-5", "78-5", "73"], "73").chain_valid  # extra parentheses
    assert task.check(ex, ["39*2-5", "78-5", "73"], "73").first_bad_step == 1  # two reductions in one line
    assert task.check(ex, ["(32+7)*2-4", "39*2-4", "78-4", "74"], "74").first_bad_step == 1  # copied wrong
    assert task.check(ex, ["(32+7)*2-5", "39*2-5", "78-5", "73"], "72").chain_valid is False
    two = Example("2*3+4*5", "26")
    assert task.check(two, ["2*3+20", "6+20", "26"], "26").chain_valid  # right-hand product first
    with pytest.raises(ValueError, match="step_format"):
        ArithmeticChain(modulus=10, ops="+-*", step_format="rewrite")


def test_arithmetic_next_steps_show_the_next_operations():
    """An equation+next line is a true equation, then the next pending operations of the running
    total (a prefix of them, at least one, no fewer than the line before unless it is all that is
    left): a wrong, skipped or reordered operation is wrong, and the format mixes with the others
    in one answer."""
    tree = parse_expression("(4*8+7)*2-5")
    assert next_ops_steps(tree, 2) == ["4*8=32 | +7 *2", "32+7=39 | *2 -5", "39*2=78 | -5", "78-5=73"]
    assert next_ops_steps(tree, 1) == ["4*8=32 | +7", "32+7=39 | *2", "39*2=78 | -5", "78-5=73"]
    task = ArithmeticChain(digits=1, ops="+-*", step_format="equation+next")
    ex = Example("(4*8+7)*2-5", "73")
    assert task.check(ex, ["4*8=32 | +7 *2", "32+7=39 | *2 -5", "39*2=78 | -5", "78-5=73"], "73").chain_valid
    assert task.check(ex, ["4*8=32 |+7*2-5", "32+7=39 | 39*2-5", "39*2=78", "78-5=73"], "73").chain_valid
    assert task.check(ex, ["4*8=32 | +7 -5", "32+7=39"], "73").first_bad_step == 1  # skips *2
    assert task.check(ex, ["4*8=32 | *2 +7", "32+7=39"], "73").first_bad_step == 1  # reordered
    assert task.check(ex, ["4*8=32 | +7 *2", "32+7=39 | *2 -6"], "73").first_bad_step == 2  # a wrong operand
    assert task.check(ex, ["4*8=32 | +7 *2", "32+7=39 | *2 -5 x"], "73").first_bad_step == 2  # not operations
    assert task.check(ex, ["4*8=32 | +7", "32+7=39 | *2", "39*2=78 | -5", "78-5=73 | -5"], "73").first_bad_step == 4
    # a line shows fewer operations than the line before only when it shows all that is left:
    # an answer that stops early fails at the line whose window shrank, not at its answer
    ex8 = Example("(8-1)*3*2+8-9-1-1", "39")
    early = ["8-1=7 | *3 *2", "7*3=21 | *2 +8", "21*2=42 | +8 -9", "42+8=50 | -9 -1", "50-9=41 | -1", "41-1=40"]
    assert task.check(ex8, early, "40").first_bad_step == 5
    assert task.check(ex8, early[:4] + ["50-9=41 | -1 -1", "41-1=40 | -1", "40-1=39"], "39").chain_valid
    assert task.check(ex8, ["8-1=7 | *3", "7*3=21 | *2 +8 -9"], "39").step_ok == [True, True]  # growing is fine
    assert pending_ops(parse_expression("2*(3+4)")) is None  # a group is no running total
    with pytest.raises(ValueError, match="group_prob"):
        ArithmeticChain(group_prob=0.3, step_format="equation+next")
    with pytest.raises(ValueError, match="next_ops"):
        ArithmeticChain(step_format="equation+next", next_ops=0)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), pick=st.integers(0, 1000))
def test_arithmetic_step_gold_passes_and_corruptions_fail(seed, pick):
    """One step of a long expression: the line must be a true step and the answer exactly what it leaves."""
    task = get_task("arithmetic_step", length=[1, 12], digits=1, ops="+-*", min_value=0, max_value=99)
    ex = task.generate(random.Random(seed), 1)
    assert ex.question.startswith("One step of ") and len(ex.steps) == 1
    assert task.check(ex, ex.steps, ex.answer).chain_valid
    bad_line = _bump_number(ex.steps[0], pick)
    assert task.check(ex, [bad_line], ex.answer).first_bad_step == 1
    assert not task.check(ex, ex.steps, _bump_number(ex.answer, pick)).answer_correct
    assert not task.check(ex, ex.steps * 2, ex.answer).chain_valid


def test_arithmetic_step_knobs():
    with pytest.raises(ValueError, match="one-step"):
        get_task("arithmetic_step").generate(random.Random(0), 2)
    with pytest.raises(ValueError, match="length"):
        get_task("arithmetic_step", length=[0, 3])
    with pytest.raises(ValueError, match="modulus"):
        get_task("arithmetic_step", modulus=10, ops="+-*")
    assert get_task("arithmetic_step").problem_text("One step of 3+4*2") == "3+4*2"
