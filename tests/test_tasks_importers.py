"""Importers: the GSM8K-format reader on the project's own fixture (good kept, each broken kind
counted, file:line on error, offline Hub as one clear line), the free-text equation finder, and
the reasoning-gym importer (the `gym` extra; the `dev` extra installs it, so these always run)."""
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import assume, given, settings, strategies as st

from reasonlm.answer import render_completion
from reasonlm.example import Example
from reasonlm.tasks import get_task, is_importer
from reasonlm.tasks.gsm8k import FIXTURE_RECORDS, GSM8K, find_equations, write_fixture
from reasonlm.tasks.reasoning_gym import ReasoningGym
from reasonlm.verdict import judge

REPO = Path(__file__).resolve().parents[1]
EXPECTED_REPORT = {"read": 16, "kept": 12, "rejected": {"bad_annotation": 1, "final_mismatch": 1, "malformed": 2}}


@pytest.fixture
def fixture_path(tmp_path):
    return write_fixture(str(tmp_path / "gsm8k_sample.jsonl"))


def test_fixture_in_repo_is_current(fixture_path):
    assert (REPO / "data/fixtures/gsm8k_sample.jsonl").read_text() == Path(fixture_path).read_text()


def test_gsm8k_fixture_report_and_examples(fixture_path):
    examples, report = GSM8K(fixture_path).load()
    assert report == EXPECTED_REPORT
    assert [ex.meta for ex in examples] == [{"source": fixture_path, "line": i} for i in range(1, 13)]
    first = examples[0]
    assert first.steps == ("On Tuesday she picked 36/2=18 strawberries.", "In total she picked 36+18=54 strawberries.")
    assert first.answer == "54" and first.n_steps == 2
    by_answer = {ex.answer: ex for ex in examples}
    assert by_answer["90"].steps[1] == "He saves 450*0.2=90."  # '.2' gets its 0
    assert by_answer["11.25"].steps[0] == "The notebooks cost 4*2.5=10."  # '= $<<..>>10' folded
    assert by_answer["34"].n_steps == 3 and len(by_answer["34"].steps) == 2  # two annotations, one line
    assert by_answer["5"].steps[1] == "It leaves at 2 pm."  # a line without annotation is kept
    task = GSM8K(fixture_path)
    for ex in examples:
        check = task.check(ex, ex.steps, ex.answer)
        assert check.chain_valid and check.answer_correct, ex
        assert judge(task, ex, render_completion(ex.steps, ex.answer)).check.accepted
        assert ex.family == task.name and Example.from_row(json.loads(json.dumps(ex.to_row()))) == ex


def test_gsm8k_check_flags_wrong_equations(fixture_path):
    examples, _ = GSM8K(fixture_path).load()
    ex = examples[0]
    task = GSM8K(fixture_path)
    wrong = ["On Tuesday she picked 36 / 2 = 19 strawberries.", ex.steps[1]]
    check = task.check(ex, wrong, "54")
    assert check.first_bad_step == 1 and check.answer_correct and not check.chain_valid
    assert not task.check(ex, ex.steps, "55").answer_correct
    # the last equation must give the final answer
    assert not task.check(ex, [*ex.steps, "Half of that is 54/2=27."], "54").chain_valid


def test_gsm8k_on_error_raise_names_file_and_line(fixture_path):
    with pytest.raises(ValueError, match=rf"^{fixture_path}:15: malformed record: not valid JSON"):
        GSM8K(fixture_path, on_error="raise").load()


def test_gsm8k_missing_key_and_no_final_line(tmp_path):
    path = tmp_path / "two.jsonl"
    path.write_text("\n" + json.dumps({"question": "q?"}) + "\n" + json.dumps({"question": "q?", "answer": "1+1=<<1+1=2>>2"}) + "\n")
    _, report = GSM8K(str(path)).load()
    assert report["read"] == 2 and report["rejected"]["malformed"] == 2
    with pytest.raises(ValueError, match=r"two\.jsonl:2: malformed record: missing or empty 'answer'"):
        GSM8K(str(path), on_error="raise").load()


def test_gsm8k_reads_parquet(tmp_path, fixture_path):
    import pyarrow as pa  # under datasets, a dependency
    import pyarrow.parquet as pq
    rows = [json.loads(line) for line in Path(fixture_path).read_text().splitlines()[:14]]  # good + 2 bad
    path = str(tmp_path / "sample.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    examples, report = GSM8K(path).load()
    assert report == {"read": 14, "kept": 12, "rejected": {"bad_annotation": 1, "final_mismatch": 1, "malformed": 0}}
    assert examples[3].meta == {"source": path, "line": 4}


def test_gsm8k_refuses_bad_settings_and_generation(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        GSM8K(on_error="ignore")
    with pytest.raises(ValueError, match="no such file"):
        GSM8K(str(tmp_path / "missing.jsonl")).load()
    assert is_importer(get_task("gsm8k"))


def test_gsm8k_hub_offline_is_one_clear_line(tmp_path):
    # offline mode must be set before the HF libraries are imported, hence a fresh process
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = ("import json\nfrom reasonlm.tasks.gsm8k import GSM8K\ntry:\n    GSM8K('openai/gsm8k').load()\n"
            "except ValueError as e:\n    print(json.dumps(str(e)))\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    message = json.loads(out.stdout.strip().splitlines()[-1])
    assert "\n" not in message
    assert "HF_HUB_OFFLINE" in message and "openai/gsm8k" in message


def test_gsm8k_hub_rows_are_read(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, config, split):
        calls.append((path, config, split))
        return [FIXTURE_RECORDS[0], {"question": "q?"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples, report = GSM8K("someone/gsm8k-like", config="main", split="test").load()
    assert calls == [("someone/gsm8k-like", "main", "test")]
    assert report == {"read": 2, "kept": 1, "rejected": {"bad_annotation": 0, "final_mismatch": 0, "malformed": 1}}
    assert examples[0].meta == {"source": "someone/gsm8k-like", "line": 1}


# --- finding equations in free text ------------------------------------------------------------
@pytest.mark.parametrize("line,expected", [
    ("Natalia sold 48/2=24 clips in May.", [(True, 24)]),
    ("7 days/week * 5 weeks/month = 35 days/month", [(True, 35)]),
    ("53 x €13 = €689", [(True, 689)]),
    ("In a 5-day work week, James responds to 112*5=560 emails", [(True, 560)]),
    ("- So 220.0 meters / 2.0 meters per plant = 110 plants total", [(True, 110)]),
    ("Thus, T = 156 - 136 = 20 bouncy balls.", [(True, 20)]),
    ("102 spools / 255 spools * 100% = 40%", [(True, 40)]),
    ("15/60 = 1/4 miles per minute", [(True, Fraction(1, 4))]),
    ("The room's perimeter is 2(83+37) = 240", [(True, 240)]),
    ("5+3=8 and 8*2=16.", [(True, 8), (True, 16)]),
    ("2+3+5=8", [(False, 8)]),
    ("It raised $1,200 + $850 = $2,050.", [(True, 2050)]),
    ("we get 2x+100=184", []),  # algebra: not checked
    ("James receives 48=48 emails", []),
    ("It leaves at 2 pm.", []),
])
def test_find_equations(line, expected):
    assert find_equations(line) == expected


@settings(max_examples=100, deadline=None)
@given(a=st.integers(0, 10**6), b=st.integers(1, 10**6), op=st.sampled_from("+-*/"), off=st.integers(1, 9))
def test_find_equations_property(a, b, op, off):
    if op == "/":
        a *= b  # a whole quotient: every division case asserts (a random a/b almost never divides)
    value = {"+": Fraction(a + b), "-": Fraction(a - b), "*": Fraction(a * b), "/": Fraction(a, b)}[op]
    assume(value.denominator == 1)  # holds by construction; says what the equations below need
    c = int(value)
    assert find_equations(f"So {a} {op} {b} = {c} apples.") == [(True, c)]
    assert find_equations(f"So {a}{op}{b}={c + off} apples.") == [(False, c + off)]


# --- reasoning-gym -------------------------------------------------------------------------------
def test_reasoning_gym_missing_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # makes `import reasoning_gym` fail
    with pytest.raises(ValueError, match=r"install reasonlm\[gym\]"):
        ReasoningGym("chain_sum", size=2).load()


def test_reasoning_gym_refuses_unsupported_settings():
    with pytest.raises(ValueError, match="not supported"):
        ReasoningGym("countdown")
    with pytest.raises(ValueError, match="size"):
        ReasoningGym("chain_sum", size=0)
    with pytest.raises(ValueError, match="on_error"):
        ReasoningGym("chain_sum", on_error="ignore")
    assert is_importer(ReasoningGym("chain_sum"))


def test_get_task_passes_a_knob_called_name():
    """reasoning_gym's knob `name` (which of its tasks) reaches the importer: get_task's family is positional-only."""
    task = get_task("reasoning_gym", name="chain_sum", size=3, on_error="raise")
    assert (task.name, task.task, task.size, task.on_error) == ("reasoning_gym", "chain_sum", 3, "raise")


def test_reasoning_gym_bad_config_is_one_line():
    with pytest.raises(ValueError, match=r"create_dataset\('chain_sum'.*failed") as e:
        ReasoningGym("chain_sum", size=2, config={"no_such_setting": 1}).load()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["chain_sum", "basic_arithmetic", "decimal_chain_sum", "products", "gsm_symbolic"])
def test_reasoning_gym_import_is_verified(name):
    task = ReasoningGym(name, size=40, seed=1)
    examples, report = task.load()
    assert report["read"] == 40 == report["kept"] + sum(report["rejected"].values())
    assert report["kept"] >= 30
    for ex in examples:
        check = task.check(ex, ex.steps, ex.answer)
        assert check.chain_valid and check.answer_correct, ex
        assert ex.family == task.name and Example.from_row(json.loads(json.dumps(ex.to_row()))) == ex
    ex = next(e for e in examples if e.n_steps)
    i = next(i for i, step in enumerate(ex.steps) if find_equations(step))  # the first line with an equation
    steps = list(ex.steps)
    steps[i] = steps[i].replace("=", "=1", 1)  # now its result is wrong
    assert task.check(ex, steps, ex.answer).first_bad_step == i + 1


def test_reasoning_gym_expression_trace_and_rejections():
    examples, report = ReasoningGym("basic_arithmetic", size=300, seed=3).load()
    # reasoning-gym 0.1.25 truncates some divisions ('-1 / -27' answered '-1'); those are dropped
    assert report["rejected"]["final_mismatch"] >= 1
    ex = examples[0]
    assert ex.meta["kind"] == "expression" and ex.n_steps == len(ex.steps) >= 1


class _FakeDataset(list):
    def score_answer(self, answer, entry):
        return 1.0 if answer == entry["answer"] else 0.0


def test_reasoning_gym_load_without_the_extra(monkeypatch):
    """The importer's own logic on a stand-in for reasoning_gym: kept records are Examples its
    checker accepts, each rejection kind is counted, and on_error='raise' stops at a malformed one."""
    entries = [{"question": "What is 2 + 3 * 4?", "answer": "14", "metadata": {"expression": "2 + 3 * 4"}},
               {"question": "What is 7 - 2?", "answer": "6", "metadata": {"expression": "7 - 2"}},
               {"question": "What is 1 + 1?", "answer": "2", "metadata": {}}]
    fake = type(sys)("reasoning_gym")
    fake.create_dataset = lambda name, size, seed, **config: _FakeDataset(entries)
    monkeypatch.setitem(sys.modules, "reasoning_gym", fake)
    task = ReasoningGym("chain_sum", size=3)
    examples, report = task.load()
    assert report == {"read": 3, "kept": 1, "rejected": {"bad_annotation": 0, "final_mismatch": 1, "malformed": 1}}
    ex = examples[0]
    assert (ex.family, ex.steps, ex.answer, ex.n_steps) == ("reasoning_gym", ("3*4=12", "2+12=14"), "14", 2)
    assert ex.meta == {"source": "reasoning_gym/chain_sum", "index": 0, "kind": "expression", "expression": "2 + 3 * 4"}
    assert get_task("reasoning_gym").check(ex, ["3*4=12", "2+12=15"], "14").first_bad_step == 2
    with pytest.raises(ValueError, match=r"^reasoning_gym/chain_sum record 2: malformed record: no expression"):
        ReasoningGym("chain_sum", size=3, on_error="raise").load()
