import importlib.util
import os

import pytest

from reasonlm import cli, evaluate, sources
from reasonlm.config import EvalConfig
from reasonlm.evaluate.runner import build_prompt, stop_strings_for
from reasonlm.sources import SourceError, load_sources
from reasonlm.tasks.gsm8k import write_fixture
from tests.eval_helpers import write_suite
from tests.helpers import ROOT, TINY_TASK, rows


def test_generated_suites_load_their_problems():
    cfg = evaluate.load_suite(os.path.join(ROOT, "eval", "word-problems.yaml"), ["sources=[{task: word_problems, "
                                                                                  "steps: [1, 2], n_per_steps: 3}]"])
    srcs, skipped = load_sources(cfg)
    assert len(srcs[0].examples) == 2 * 3 * 2 and not skipped  # 2 step counts x 3 x 2 seeds
    assert len({ex.question for ex in srcs[0].examples}) == 12
    fixture = os.path.join(ROOT, "data", "fixtures", "gsm8k_sample.jsonl")
    if os.path.exists(fixture):
        cwd = os.getcwd()
        try:
            os.chdir(ROOT)
            srcs, _ = load_sources(evaluate.load_suite("eval/gsm8k-sample.yaml"))
        finally:
            os.chdir(cwd)
        assert srcs[0].lmeval and srcs[0].examples and srcs[0].info["load"]["kept"] == len(srcs[0].examples)


def test_shots_are_taken_outside_the_evaluated_problems(toy, tmp_path):
    _, tok = toy
    path = write_fixture(str(tmp_path / "g.jsonl"))
    cfg = EvalConfig(sources=[{"gsm8k": path}, {"task": "arithmetic", "args": TINY_TASK, "steps": [2, 3],
                                                "n_per_steps": 5, "name": "ar"}], shots=2, prompt="plain")
    srcs, _ = load_sources(cfg)
    for p in srcs:
        assert len(p.exemplars) == 2
        assert not {e.question for e in p.exemplars} & {ex.question for ex in p.examples}
    text, ids = build_prompt(tok, srcs[0].examples[0].question, "plain", "", srcs[0].exemplars, "cot")
    assert text.count("Question: ") == 3 and text.endswith("Answer:") and "#### " in text
    text, _ = build_prompt(tok, "1+1", "chat", "", srcs[1].exemplars, "cot")
    assert text.count("<|im_start|>user") == 3 and text.endswith("<|im_start|>assistant\n")
    assert stop_strings_for(cfg) == ["Question:"]


def test_an_empty_split_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sources, "read_dataset", lambda path: {"test": [], "test_ood": rows(2)})
    with pytest.raises(SourceError, match="source 'test' has no problems"):
        load_sources(EvalConfig(data="d", splits=["test_ood", "test"]))
    with pytest.raises(SourceError, match="split 'valid' not in d"):
        load_sources(EvalConfig(data="d", splits=["valid"]))
    (tmp_path / "empty.jsonl").write_text("")
    path = write_suite(tmp_path / "s.yaml", sources=[{"jsonl": str(tmp_path / "empty.jsonl")}])
    with pytest.raises(SystemExit) as e:  # before the model is even loaded: nothing is lost
        cli.main(["eval", path, "--model", "/nonexistent-model", "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "source 'empty' has no problems" in capsys.readouterr().err


def test_missing_reasoning_gym_skips_the_source(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "reasoning_gym" else real(n, *a))
    cfg = EvalConfig(sources=[{"reasoning_gym": "chain_sum", "size": 3}, {"task": "arithmetic", "steps": [2, 2],
                                                                         "n_per_steps": 2}])
    srcs, skipped = load_sources(cfg)
    assert [p.name for p in srcs] == ["arithmetic"] and "chain_sum" in skipped
    assert "skipped source 'chain_sum'" in capsys.readouterr().err
    with pytest.raises(SourceError, match="no source could be evaluated"):
        load_sources(EvalConfig(sources=[{"reasoning_gym": "chain_sum"}]))
