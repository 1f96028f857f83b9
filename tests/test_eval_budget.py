"""Token budgets come from the question (or max_new_tokens), never from the gold solution; samples cut
off by their budget are counted per source; answer-only sources say their steps were not checkable;
a Hub adapter id offline is one line."""
import json
import os
import random

import pytest

from reasonlm import cli
from reasonlm.config import EvalConfig
from reasonlm.evaluate import runner
from reasonlm.example import Example, answer_budget, question_budget, render_target
from reasonlm.model import ModelError, load_adapter
from reasonlm.sources import Source
from reasonlm.tasks import get_task, question_families
from tests.eval_helpers import toy_dir, write_suite  # noqa: F401 (fixtures)
from tests.helpers import ScriptedEngine

# An 8-step problem with its full worked solution; the eval file gives only its answer.
PROBLEM = get_task("arithmetic", digits=1, ops="+-*", min_value=0, max_value=99).generate(random.Random(3), 8)


def test_budget_does_not_depend_on_the_gold_solution(toy):
    _, tok = toy
    answer_only = Example(PROBLEM.question, PROBLEM.answer, family="records")
    cfg = EvalConfig()
    jobs = runner.plan_jobs([Source("worked", "x", [PROBLEM]), Source("answer_only", "x", [answer_only])], tok, cfg,
                            "cot")
    assert jobs[0].budget == jobs[1].budget == question_budget(tok, PROBLEM.question)
    full = len(tok(render_target(PROBLEM, "cot"), add_special_tokens=False)["input_ids"])
    assert jobs[1].budget >= 2 * full  # room for the whole worked solution, and as much again
    capped = runner.plan_jobs([Source("a", "x", [answer_only])], tok, cfg, "cot", context=len(jobs[1].ids) + 50)
    assert capped[0].budget == 50  # cut to the context left after the prompt
    assert answer_budget(tok, PROBLEM.question, 10, None, max_new_tokens=7) == 7


def test_answer_only_file_gets_full_length_answers_and_truncation_is_counted(toy, toy_dir, tmp_path, monkeypatch):
    _, tok = toy
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"q": PROBLEM.question, "a": PROBLEM.answer}) + "\n")
    engine = ScriptedEngine(tok, {PROBLEM.question: render_target(PROBLEM, "cot")})
    monkeypatch.setattr(runner, "engine_for", lambda *args, **kwargs: engine)
    suite = write_suite(tmp_path / "s.yaml", sources=[{"file": str(path), "columns": {"question": "q", "answer": "a"},
                                                        "name": "mine"}], max_new_tokens=0)
    cli.main(["eval", suite, "--model", toy_dir, "--out", str(tmp_path / "full")])
    report = json.load(open(tmp_path / "full" / "report.json"))
    mine = report["splits"]["mine"]
    assert mine["accuracy"] == 1.0 and mine["truncated"] == 0.0 and mine["truncated_samples"] == 0
    assert mine["steps_checkable"] is False and mine["steps_checkable_problems"] == 0
    for step_metric in ("step_accuracy", "chain_valid", "right_answer_wrong_chain", "first_bad_step", "steps_checked"):
        assert step_metric not in mine  # absent, not 0
    md = open(tmp_path / "full" / "report.md").read()
    assert "cut off at budget" in md and "Steps not checkable" in md and "mine (0 of 1 problems checkable)" in md

    cli.main(["eval", suite, "--model", toy_dir, "--out", str(tmp_path / "cut"), "max_new_tokens=6"])
    cut = json.load(open(tmp_path / "cut" / "report.json"))["splits"]["mine"]
    assert cut["truncated"] == 1.0 and cut["truncated_samples"] == 1 and cut["accuracy"] == 0.0
    sample = json.loads(open(tmp_path / "cut" / "samples.jsonl").readline())
    assert sample["truncated"] is True and sample["budget"] == 6 == sample["tokens"]


def test_a_mixed_source_reports_step_metrics_over_its_checkable_problems(toy, toy_dir, tmp_path, monkeypatch):
    _, tok = toy
    path = tmp_path / "mixed.jsonl"
    worked = {"question": "What is 2+3*4?", "answer": "14", "steps": ["3*4=12", "2+12=14"], "n_steps": 2}
    path.write_text(json.dumps(worked) + "\n" + json.dumps({"question": PROBLEM.question, "answer": PROBLEM.answer}) + "\n")
    engine = ScriptedEngine(tok, {worked["question"]: "3*4=12\n2+12=15\n#### 14", PROBLEM.question: "#### 0"})
    monkeypatch.setattr(runner, "engine_for", lambda *args, **kwargs: engine)
    suite = write_suite(tmp_path / "s.yaml", sources=[{"file": str(path), "name": "mixed"}], max_new_tokens=0)
    cli.main(["eval", suite, "--model", toy_dir, "--out", str(tmp_path / "out")])
    mixed = json.load(open(tmp_path / "out" / "report.json"))["splits"]["mixed"]
    assert mixed["steps_checkable"] is False and mixed["steps_checkable_problems"] == 1 and mixed["accuracy"] == 0.5
    assert mixed["step_accuracy"] == 0.5 and mixed["chain_valid"] == 0.0 and mixed["right_answer_wrong_chain"] == 1.0


def test_hub_adapter_id_offline_is_one_line(toy_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # never the network, whatever the environment says
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # and nothing cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        load_adapter(toy_dir, "someone/reasonlm-adapter")
    message = str(e.value)
    assert message == ("adapter 'someone/reasonlm-adapter' is neither a local directory nor reachable on the Hub "
                       "(HF_HUB_OFFLINE=1 is set)")
    with pytest.raises(ModelError, match=r"^adapter path not found: \./no/such/adapter$"):
        load_adapter(toy_dir, "./no/such/adapter")


def test_eval_and_chat_print_the_hub_adapter_error_as_one_line(toy_dir, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    suite = write_suite(tmp_path / "s.yaml")
    for argv in (["eval", suite, "--model", toy_dir, "--adapter", "someone/reasonlm-adapter", "--out", str(tmp_path / "o")],
                 ["chat", "--model", toy_dir, "--adapter", "someone/reasonlm-adapter", "-p", "1+1"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: adapter 'someone/reasonlm-adapter' is neither a local directory nor reachable")
        assert "Traceback" not in "\n".join(err)
    assert not os.path.exists(tmp_path / "o" / "report.json")


def test_question_budget_leaves_every_generated_family_room_for_twice_its_gold(toy):
    """The rule was sized on the families' gold solutions (example.py): a model writing like the gold
    gets at least twice the room it needs, with no gold to look at."""
    _, tok = toy
    rng = random.Random(0)
    for family in question_families():
        task = get_task(family)
        for n_steps in (1, 4, 8):
            try:
                problems = [task.generate(rng, n_steps) for _ in range(10)]
            except ValueError:  # not a length this family makes (arithmetic_step: one step)
                continue
            for ex in problems:
                gold = len(tok(render_target(ex, "cot"), add_special_tokens=False)["input_ids"])
                assert question_budget(tok, ex.question) >= 2 * gold, (family, n_steps, ex.question)
