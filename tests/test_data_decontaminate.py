"""data/decontaminate.py: the Blocklist's rules, suites, and planted eval questions caught in train."""
import json
import random

import pytest
from hypothesis import given, settings, strategies as st

from reasonlm import data
from reasonlm.data.decontaminate import BOILERPLATE, Blocklist, source_questions, suite_questions, words
from reasonlm.example import fold_question, question_key
from reasonlm.sources import SOURCE_KINDS
from reasonlm.tasks import get_task
from tests.data_helpers import REPO, TINY, build, gsm8k_file, jsonl


def test_blocklist_rules():
    b = Blocklist(8)
    long_q = "Mia buys 5 boxes of eggs. Each box holds 12 eggs. She gives 7 eggs to Omar. How many eggs are left?"
    b.add(long_q, "suite:1", "suite")
    b.add("3+4-2", "suite:2", "suite")
    b.add("7 + 1 - 3", "test-0", "test", grams=False)  # generated eval split: exact only
    b.drop_boilerplate()
    hit = lambda q: b.hit(q, question_key(q))
    assert hit("mia buys 5 boxes of eggs, each box holds 12 eggs!")[0] == "ngram"
    assert hit("Liam buys 5 boxes of eggs. Each crate holds 12 eggs.") is None  # 6 shared words in a row
    assert hit("3 + 4 - 2") == ("exact", "suite:2")  # normalisation folds spacing
    assert question_key("Solve for X:  3x + 7 = 22.") == question_key("solve for x 3x+7=22")
    assert question_key("It costs $2.50.") == "it costs 2.50"
    assert hit("3+4-2+1") is None  # short questions are never n-gram tested
    # a phrase in BOILERPLATE or more eval questions is template text, not any question's content
    b = Blocklist(8)
    for i in range(BOILERPLATE):
        b.add(f"State the final answer to the following arithmetic problem: {i} + {i} =", f"s:{i}", "s")
    b.drop_boilerplate()
    assert b.boilerplate > 0
    assert b.hit("State the final answer to the following arithmetic problem: 9 + 8 - 7 + 6 =", "x") is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=list("0123456789+-*/() .,=$xX\t\n") + ["٣", "İ"], max_size=30))
def test_question_key_short_cut_agrees_with_the_rules(q):
    assert question_key(q) == fold_question(q)


def test_planted_arithmetic_is_caught_by_exact_match(tmp_path):
    task, rng = get_task("arithmetic", **TINY), random.Random(7)
    planted = sorted({task.generate(rng, 2).question for _ in range(300)})  # short: < 8 words
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps({"question": q.replace("+", " + ")}) + "\n" for q in planted))
    path = build(tmp_path, n_train=1500, decontaminate_against=[str(suite)])
    train = {question_key(r["question"]) for r in jsonl(path / "jsonl/train.jsonl")}
    assert not train & {question_key(q) for q in planted}
    report = json.loads((path / "decontamination.json").read_text())
    assert report["against"][str(suite)] == len(planted)
    assert report["splits"]["train"]["generated"]["exact"] > 0
    assert report["splits"]["train"]["generated"]["ngram"] == 0  # arithmetic is never n-gram tested
    assert any(e["matches"].startswith(f"{suite}:") for e in report["splits"]["train"]["generated"]["examples"])


def test_planted_word_problem_8gram_is_caught(tmp_path):
    wp, rng = get_task("word_problems"), random.Random(3)
    suite_qs = [wp.generate(rng, 3).question for _ in range(5)]
    suite = tmp_path / "eval_suite.jsonl"
    suite.write_text("".join(json.dumps({"question": q}) + "\n" for q in suite_qs))
    ws = words(suite_qs[0])
    eight, seven = " ".join(ws[2:10]), " ".join(ws[2:9])
    imported = gsm8k_file(tmp_path / "train.jsonl", [
        f"Before lunch, {eight}. How many are there?",  # shares 8 words with a suite question: removed
        f"Before lunch, {seven}. How many are there?",  # shares only 7: kept
        "A completely unrelated question about 3 kites and 4 birds flying over the hill at noon today?",
    ])
    path = build(tmp_path, n_train=300, decontaminate_against=[str(suite)],
                 tasks=[{"name": "arithmetic", "args": TINY}, {"name": "gsm8k", "args": {"path": imported}}])
    kept = [r["question"] for r in jsonl(path / "jsonl/train.jsonl") if r["family"] == "gsm8k"]
    assert len(kept) == 2 and not any(eight in " ".join(words(q)) for q in kept)
    removed = json.loads((path / "decontamination.json").read_text())["splits"]["train"]["imported"]
    assert removed["ngram"] == 1 and removed["examples"][0]["reason"] == "ngram"
    assert removed["examples"][0]["matches"] == f"{suite}:1"
    card = (path / "README.md").read_text()
    assert "## Decontamination" in card and "| train | imported | 0 | 1 |" in card


def test_missing_suite_is_an_error(tmp_path):
    with pytest.raises(data.DataError, match="decontaminate_against: .*nope.jsonl does not exist"):
        build(tmp_path, decontaminate_against=[str(tmp_path / "nope.jsonl")])


def test_decontamination_without_reasoning_gym_warns_and_goes_on(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "reasoning_gym" else real(n, *a))
    assert list(suite_questions(str(REPO / "eval" / "reasoning-gym.yaml"))) == []
    assert "reasoning_gym not installed" in capsys.readouterr().out


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_every_source_kind_has_a_decontamination_rule(tmp_path, kind, monkeypatch):
    """A new source kind must not silently escape decontamination: each one is read or skipped on purpose."""
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"question": "What is 2+3?", "answer": "5"}\n')
    (tmp_path / "ds" / "jsonl").mkdir(parents=True)
    (tmp_path / "ds" / "jsonl" / "test.jsonl").write_text('{"question": "What is 4+4?", "answer": "8"}\n')
    spec = {"jsonl": str(jsonl), "gsm8k": str(jsonl), "dataset": str(tmp_path / "ds"), "task": "arithmetic",
            "reasoning_gym": "chain_sum", "file": str(jsonl)}[kind]
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "reasoning_gym" else real(n, *a))
    found = [q for q, _ in source_questions(0, {kind: spec}, [0], "suite.yaml")]
    assert found == {"jsonl": ["What is 2+3?"], "gsm8k": ["What is 2+3?"], "dataset": ["What is 4+4?"], "task": [],
                     "reasoning_gym": [], "file": ["What is 2+3?"]}[kind]
