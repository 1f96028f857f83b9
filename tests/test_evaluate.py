"""The evaluator: generation, scoring, metrics, suites, resume, sharding, compare and the CI gate."""
import glob
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reasonlm import cli, evaluate
from reasonlm.config import EvalConfig
from tests.helpers import TINY_TASK, rows, tiny_model_and_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy():
    model, tok = tiny_model_and_tokenizer()
    model.eval()
    return model, tok


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory, toy):
    path = str(tmp_path_factory.mktemp("toy"))
    model, tok = toy
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_suite(path, **settings_):
    import yaml
    base = {"name": "toy", "sources": [{"task": "arithmetic", "args": TINY_TASK, "steps": [1, 3], "n_per_steps": 4,
                                        "name": "arith"}], "max_new_tokens": 12, "batch_size": 4}
    base.update(settings_)
    path.write_text("# reasonlm eval toy.yaml --model TOY\n" + yaml.safe_dump(base))
    return str(path)


# --- generation ------------------------------------------------------------------------------
def test_batched_greedy_equals_one_at_a_time_and_hf_generate(toy):
    model, tok = toy
    rs = rows(10, seed=1)
    prompts = [evaluate.build_prompt(tok, r["question"])[1] for r in rs]
    budgets = [evaluate.budget_for(tok, r, "cot") for r in rs]
    stops, pad = evaluate.stop_token_ids(tok), tok.pad_token_id
    batched = evaluate.generate(model, prompts, budgets, stops, pad, batch_size=4)
    alone = [evaluate.generate(model, [p], [b], stops, pad, batch_size=1)[0] for p, b in zip(prompts, budgets)]
    assert batched == alone
    for p, b, ours in list(zip(prompts, budgets, batched))[:3]:
        x = torch.tensor([p])
        y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=b, do_sample=False,
                           eos_token_id=sorted(stops), pad_token_id=pad)[0, len(p):].tolist()
        assert ours == [t for t in y[:next((i for i, t in enumerate(y) if t in stops), len(y))]]


def test_budgets_and_early_exit(toy):
    model, tok = toy
    prompts = [evaluate.build_prompt(tok, r["question"])[1] for r in rows(3)]
    out = evaluate.generate(model, prompts, [1, 5, 9], set(), tok.pad_token_id, batch_size=3)
    assert [len(o) for o in out] == [1, 5, 9]


def test_stop_strings_end_generation_and_are_cut(toy):
    model, tok = toy
    prompt = evaluate.build_prompt(tok, rows(1)[0]["question"])[1]
    free = evaluate.generate(model, [prompt], 20, set(), tok.pad_token_id)[0]
    text = tok.decode(free, skip_special_tokens=True)
    stop = tok.decode(free[5:7], skip_special_tokens=True)
    assert stop and stop in text
    stopped = evaluate.generate(model, [prompt], 20, set(), tok.pad_token_id, stop_strings=[stop],
                                decode=lambda ids: tok.decode(ids, skip_special_tokens=True))[0]
    assert len(stopped) <= 7 and stopped == free[:len(stopped)]
    assert stop in tok.decode(stopped, skip_special_tokens=True)
    assert evaluate.cut_at_stop("8+1=9\n#### 9\nQuestion: next", ["Question:"]) == "8+1=9\n#### 9\n"
    with pytest.raises(ValueError, match="decode"):
        evaluate.generate(model, [prompt], 3, set(), tok.pad_token_id, stop_strings=["x"])


def test_per_row_seeds_make_samples_independent_of_the_batch(toy):
    model, tok = toy
    prompts = [evaluate.build_prompt(tok, r["question"])[1] for r in rows(6, seed=2)]
    seeds = [11, 12, 13, 14, 15, 16]
    together = evaluate.generate(model, prompts, 10, set(), tok.pad_token_id, 6, temperature=1.0, seeds=seeds)
    apart = [evaluate.generate(model, [p], 10, set(), tok.pad_token_id, 1, temperature=1.0, seeds=[s])[0]
             for p, s in zip(prompts, seeds)]
    assert together == apart
    other = evaluate.generate(model, prompts, 10, set(), tok.pad_token_id, 6, temperature=1.0, seeds=[s + 100 for s in seeds])
    assert other != together


def test_batches_are_the_same_for_any_number_of_processes(toy):
    _, tok = toy
    cfg = EvalConfig(samples=3, temperature=0.5, batch_size=5)
    part = evaluate.Part("p", "rows", [evaluate._row(r, "", "arithmetic") for r in rows(7)])
    jobs = evaluate.plan_jobs([part], tok, cfg, "cot")
    batches = evaluate.make_batches(jobs, 5)
    assert sorted(j.key for b in batches for j in b) == sorted(j.key for j in jobs) and len(jobs) == 21
    lengths = [len(j.ids) for b in batches for j in b]
    assert lengths == sorted(lengths)  # sorted by prompt length
    shards = [batches[r::2] for r in range(2)]
    assert sorted(id(b) for s in shards for b in s) == sorted(id(b) for b in batches)
    assert len({j.seed for j in jobs}) == 21  # every (problem, sample) has its own stream


# --- scoring ---------------------------------------------------------------------------------
ROW = {"id": "a", "family": "arithmetic", "question": "8+1-5", "steps": ["8+1=9", "9-5=4"], "answer": "4",
       "n_steps": 2, "meta": "{}"}


def test_score_verdicts():
    s = evaluate.score(ROW, "8+1=9\n9-5=4\n#### 4")
    assert s["correct"] and s["chain_valid"] and s["steps_ok"] == 2 and s["first_bad_step"] is None
    s = evaluate.score(ROW, "8+1=10\n10-5=4\n#### 4")  # right answer through a wrong chain
    assert s["correct"] and s["right_answer_wrong_chain"] and s["first_bad_step"] == 1 and not s["chain_valid"]
    s = evaluate.score(ROW, "8+1=9\n9-5=3\n#### 3")
    assert not s["correct"] and s["first_bad_step"] == 2 and s["steps_ok"] == 1
    s = evaluate.score(ROW, "8+1=9\nso it is 4")  # no final-answer line: an extraction failure
    assert s["extraction_failed"] and not s["correct"] and s["flexible_correct"] and s["answer"] is None
    s = evaluate.score(ROW, "")
    assert s["extraction_failed"] and s["steps_total"] == 0


def test_score_survives_a_broken_checker():
    class Broken:
        def check(self, *a):
            raise RuntimeError("boom")
    s = evaluate.score(ROW, "#### 4", task=Broken())
    assert s["correct"] and "boom" in s["checker_error"] and s["steps_total"] == 0
    summary = evaluate.summarize([{**s, "id": "a", "n_steps": 2, "family": "arithmetic", "gold": "4"}])
    assert summary["checker_errors"] == 1


GSM_ROW = {"id": "g", "family": "gsm8k", "question": "q", "steps": ["She has 3+4=7 apples."], "answer": "7",
           "n_steps": 1, "meta": "{}"}
WORD_ROW = None


def _word_row():
    import random
    from reasonlm.tasks import get_task
    ex = get_task("word_problems").generate(random.Random(0), 3)
    return {"id": "w", "family": "word_problems", "question": ex["question"], "steps": ex["steps"],
            "answer": ex["answer"], "n_steps": ex["n_steps"], "meta": json.dumps(ex.get("meta") or {})}


ADVERSARIAL = st.one_of(
    st.text(max_size=400),
    st.text(alphabet="0123456789+-*/=().,$# \n×÷", max_size=600),
    st.lists(st.sampled_from(["####", " ", "\n", "9", "99999999999999999999999", "(", ")", "=", "+", "/0",
                              "<<1+1=2>>", "$", ",", ".", "-", "x", "=" * 50, "(" * 30]), max_size=200).map("".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ADVERSARIAL)
def test_score_never_raises_and_stays_fast(text):
    global WORD_ROW
    WORD_ROW = WORD_ROW or _word_row()
    for row in (ROW, GSM_ROW, WORD_ROW):
        t0 = time.perf_counter()
        s = evaluate.score(row, text, lmeval=True)
        assert time.perf_counter() - t0 < 0.5
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
    s = evaluate.score({**GSM_ROW, "answer": gold}, output, lmeval=True)
    assert s["lmeval_strict_correct"] == lmeval_exact_match(strict, gold_text)
    assert s["lmeval_flexible_correct"] == lmeval_exact_match(flexible, gold_text)


# --- metrics ---------------------------------------------------------------------------------
def sample(pid, correct, n_steps=2, family="arithmetic", split="s", answer=None, gold="4", first_bad=None, k=0,
           extraction_failed=False, chain_valid=None, steps=(2, 2)):
    chain_valid = correct and first_bad is None if chain_valid is None else chain_valid
    return {"split": split, "id": pid, "sample": k, "n_steps": n_steps, "family": family, "gold": gold,
            "correct": correct, "flexible_correct": correct, "extraction_failed": extraction_failed,
            "answer": answer if answer is not None else (gold if correct else None if extraction_failed else "0"),
            "chain_valid": chain_valid, "right_answer_wrong_chain": correct and not chain_valid,
            "first_bad_step": first_bad, "steps_ok": steps[0], "steps_total": steps[1]}


def test_summary_counts_every_metric_per_steps_and_family():
    samples = [sample("a", True), sample("b", True, first_bad=1, steps=(1, 2)), sample("c", False, n_steps=3,
               family="word_problems", first_bad=3, steps=(2, 3)), sample("d", False, extraction_failed=True, steps=(0, 0))]
    m = evaluate.summarize(samples)
    assert m["n"] == 4 and m["accuracy"] == 0.5 and len(m["accuracy_ci"]) == 2
    assert m["right_answer_wrong_chain_count"] == 1 and m["right_answer_wrong_chain"] == 0.25
    assert m["extraction_failures"] == 1 and m["extraction_failed"] == 0.25
    assert m["step_accuracy"] == round(5 / 7, 4) and m["steps_checked"] == 7
    assert m["first_bad_step"]["hist"] == {"1": 1, "3": 1} and m["first_bad_step"]["mean"] == 2.0
    assert m["first_bad_step"]["relative_mean"] == round((1 / 2 + 3 / 3) / 2, 4)
    assert m["by_steps"]["2"]["n"] == 3 and m["by_steps"]["3"]["n"] == 1
    assert m["by_family"]["word_problems"]["accuracy"] == 0.0 and m["by_family"]["arithmetic"]["n"] == 3
    for key in ("accuracy", "flexible_accuracy", "extraction_failed", "chain_valid", "right_answer_wrong_chain",
                "step_accuracy"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi


def test_pass_at_k_and_maj_at_k_from_samples():
    # problem a: 1 of 4 samples right; problem b: 3 of 4 right, with '4.0' and '$4' voting together
    samples = [sample("a", c, k=i) for i, c in enumerate([True, False, False, False])]
    samples += [sample("b", True, answer=a, k=i) for i, a in enumerate(["4", "4.0", "$4"])] + [sample("b", False, k=3)]
    m = evaluate.summarize(samples, ks=[1, 2, 4])
    assert m["n"] == 2 and m["n_samples"] == 8
    assert m["accuracy"] == 0.5 and m["pass@1"] == 0.5
    assert m["pass@2"] == round((0.5 + 1.0) / 2, 4)  # a: 1 - C(3,2)/C(4,2) = 0.5; b: 1
    assert m["pass@4"] == 1.0
    assert m["maj@4"] == 0.5  # a's vote is '0' (wrong), b's is '4'


def test_no_final_answer_is_a_rate_not_a_crash():
    samples = [sample(str(i), False, extraction_failed=True, steps=(0, 0)) for i in range(5)]
    m = evaluate.summarize(samples, ks=[])
    assert m["extraction_failed"] == 1.0 and m["accuracy"] == 0.0 and m["step_accuracy"] is None
    assert m["first_bad_step"]["n"] == 0 and m["first_bad_step"]["mean"] is None
    assert "accuracy" in evaluate.markdown({"splits": {"s": m}, "overall": m})


# --- suites ----------------------------------------------------------------------------------
SUITES = sorted(glob.glob(os.path.join(ROOT, "eval", "*.yaml")))


def test_suites_ship():
    names = {os.path.basename(p) for p in SUITES}
    assert {"in-distribution.yaml", "ood.yaml", "word-problems.yaml", "gsm8k-sample.yaml", "reasoning-gym.yaml"} <= names


@pytest.mark.parametrize("path", SUITES, ids=os.path.basename)
def test_every_shipped_suite_loads_and_opens_with_its_command(path):
    cfg = evaluate.load_suite(path)
    assert isinstance(cfg, EvalConfig) and cfg.sources
    evaluate.validate(cfg)
    rel = os.path.relpath(path, ROOT)
    with open(path) as f:
        first = f.readline().strip()
    assert first.startswith(f"# reasonlm eval {rel}") or first.startswith("# accelerate launch"), first
    assert evaluate.is_suite(path)
    for spec in cfg.sources:
        assert sum(k in spec for k in evaluate.SOURCE_KINDS) == 1 and not set(spec) - evaluate.SOURCE_OPTIONS - set(evaluate.SOURCE_KINDS)


def test_recipes_are_not_suites():
    assert not evaluate.is_suite(os.path.join(ROOT, "recipes", "tiny-cpu.yaml"))


def test_generated_suites_load_their_problems():
    cfg = evaluate.load_suite(os.path.join(ROOT, "eval", "word-problems.yaml"), ["sources=[{task: word_problems, "
                                                                                  "steps: [1, 2], n_per_steps: 3}]"])
    parts, skipped = evaluate.load_parts(cfg)
    assert len(parts[0].rows) == 2 * 3 * 2 and not skipped  # 2 step counts x 3 x 2 seeds
    assert len({r["question"] for r in parts[0].rows}) == 12
    fixture = os.path.join(ROOT, "data", "fixtures", "gsm8k_sample.jsonl")
    if os.path.exists(fixture):
        cwd = os.getcwd()
        try:
            os.chdir(ROOT)
            parts, _ = evaluate.load_parts(evaluate.load_suite("eval/gsm8k-sample.yaml"))
        finally:
            os.chdir(cwd)
        assert parts[0].lmeval and parts[0].rows and parts[0].info["load"]["kept"] == len(parts[0].rows)


def test_shots_are_taken_outside_the_evaluated_problems(toy, tmp_path):
    _, tok = toy
    from reasonlm.tasks.gsm8k import write_fixture
    path = write_fixture(str(tmp_path / "g.jsonl"))
    cfg = EvalConfig(sources=[{"gsm8k": path}, {"task": "arithmetic", "args": TINY_TASK, "steps": [2, 3],
                                                "n_per_steps": 5, "name": "ar"}], shots=2, prompt="plain")
    parts, _ = evaluate.load_parts(cfg)
    for p in parts:
        assert len(p.exemplars) == 2
        assert not {e["question"] for e in p.exemplars} & {r["question"] for r in p.rows}
    text, ids = evaluate.build_prompt(tok, parts[0].rows[0]["question"], "plain", "", parts[0].exemplars, "cot")
    assert text.count("Question: ") == 3 and text.endswith("Answer:") and "#### " in text
    text, _ = evaluate.build_prompt(tok, "1+1", "chat", "", parts[1].exemplars, "cot")
    assert text.count("<|im_start|>user") == 3 and text.endswith("<|im_start|>assistant\n")
    assert evaluate.stop_strings_for(cfg) == ["Question:"]


@pytest.mark.parametrize("suite,message", [
    ({"sources": [{"task": "arithmatic"}]}, "unknown task family 'arithmatic'"),
    ({"sources": [{"task": "arithmetic", "steps": [3, 1]}]}, "steps"),
    ({"sources": [{"jsonl": "/nonexistent/x.jsonl"}]}, "file not found"),
    ({"sources": [{"task": "arithmetic", "dataset": "x"}]}, "exactly one of"),
    ({"sources": [{"task": "arithmetic", "colour": 1}]}, "unknown key(s) ['colour']"),
    ({"sources": [{"gsm8k": "/nonexistent/g.jsonl"}]}, "not found"),
    ({"sources": [{"dataset": "{out_dir}/data"}]}, "--recipe"),
    ({"samples": 2, "ks": [4]}, "ks"),
    ({"prompt": "fancy"}, "prompt"),
    ({"tempreature": 0.5}, "unknown key 'tempreature'"),
])
def test_bad_suites_are_one_line_errors(tmp_path, suite, message, capsys):
    path = write_suite(tmp_path / "bad.yaml", **suite)
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", path, "--model", "/nonexistent-model", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([l for l in err if l.startswith("error:")]) == 1 and message in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_an_empty_split_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evaluate, "_load_dataset", lambda path: {"test": [], "test_ood": rows(2)})
    with pytest.raises(evaluate.EvalError, match="source 'test' has no problems"):
        evaluate.load_parts(EvalConfig(data="d", splits=["test_ood", "test"]))
    with pytest.raises(evaluate.EvalError, match="split 'valid' not in d"):
        evaluate.load_parts(EvalConfig(data="d", splits=["valid"]))
    (tmp_path / "empty.jsonl").write_text("")
    path = write_suite(tmp_path / "s.yaml", sources=[{"jsonl": str(tmp_path / "empty.jsonl")}])
    with pytest.raises(SystemExit) as e:  # before the model is even loaded: nothing is lost
        cli.main(["eval", path, "--model", "/nonexistent-model", "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "source 'empty' has no problems" in capsys.readouterr().err


def test_missing_reasoning_gym_skips_the_source(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "reasoning_gym" else real(n, *a))
    cfg = EvalConfig(sources=[{"reasoning_gym": "chain_sum", "size": 3}, {"task": "arithmetic", "steps": [2, 2],
                                                                         "n_per_steps": 2}])
    parts, skipped = evaluate.load_parts(cfg)
    assert [p.name for p in parts] == ["arithmetic"] and "chain_sum" in skipped
    assert "skipped source 'chain_sum'" in capsys.readouterr().err
    with pytest.raises(evaluate.EvalError, match="no source could be evaluated"):
        evaluate.load_parts(EvalConfig(sources=[{"reasoning_gym": "chain_sum"}]))


# --- a whole run -----------------------------------------------------------------------------
def read_samples(d):
    with open(os.path.join(d, "samples.jsonl")) as f:
        return [json.loads(l) for l in f]


def test_suite_run_writes_every_output(toy_dir, tmp_path, capsys):
    from reasonlm.tasks.gsm8k import write_fixture
    g = write_fixture(str(tmp_path / "g.jsonl"))
    path = write_suite(tmp_path / "s.yaml", sources=[
        {"task": "arithmetic", "args": TINY_TASK, "steps": [1, 3], "n_per_steps": 3, "name": "arith"},
        {"gsm8k": g, "name": "gsm", "max_problems": 4}])
    out = str(tmp_path / "out")
    cli.main(["eval", path, "--model", toy_dir, "--out", out, "samples=2", "temperature=0.7"])
    printed = capsys.readouterr().out
    assert "| arith |" in printed and "| gsm |" in printed and "pass@2" in printed
    for name in ("report.json", "report.md", "samples.jsonl", "config.yaml", "accuracy_by_steps.png"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not glob.glob(os.path.join(out, "samples.partial*"))
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["model"] == toy_dir and report["adapter"] is None and report["samples_path"] == "samples.jsonl"
    assert len(report["dataset_fingerprint"]) == 16 and report["config"]["samples"] == 2
    assert set(report["splits"]) == {"arith", "gsm"} and report["overall"]["n"] == 13
    assert "lmeval_strict_match" in report["splits"]["gsm"] and "lmeval_strict_match" not in report["splits"]["arith"]
    assert report["splits"]["gsm"]["maj@2_ci"] and report["sources"]["gsm"]["load"]["kept"] == 12
    assert len(report["per_problem"]) == 13 and all(len(v) == 2 for v in report["per_problem"].values())
    # the random toy model never writes '#### N': every sample is an extraction failure, not a crash
    assert report["overall"]["extraction_failed"] == 1.0 and report["accuracy"] == 0.0
    samples = read_samples(out)
    assert len(samples) == 26
    for key in ("prompt", "output", "answer", "correct", "first_bad_step", "extraction_failed", "flexible"):
        assert key in samples[0]


def test_recipe_run_keeps_the_pipeline_contract(toy_dir, tmp_path):
    from datasets import Dataset, DatasetDict
    from reasonlm.data import features
    ds = {s: Dataset.from_list([{**r, "id": f"{s}-{i}"} for i, r in enumerate(rows(6, steps=st, seed=i))],
                               features=features()) for i, (s, st) in enumerate([("test", (2, 3)), ("test_ood", (5, 6))])}
    DatasetDict(ds).save_to_disk(str(tmp_path / "data"))
    cfg = EvalConfig(model=toy_dir, adapter="none", max_new_tokens=10)
    report = evaluate.run(cfg, str(tmp_path), "cot", name="eval")
    for key in ("accuracy", "ood_accuracy", "by_steps", "splits"):
        assert key in report
    assert set(report["splits"]) == {"test", "test_ood"} and set(report["by_steps"]) >= {"2", "5"}
    report["direct"] = {k: report[k] for k in ("accuracy", "ood_accuracy", "by_steps", "splits")}
    evaluate.write_outputs(str(tmp_path / "eval"), report, read_samples(str(tmp_path / "eval")), cfg)
    assert "direct accuracy" in evaluate.markdown(report)
    model, tok = tiny_model_and_tokenizer()
    assert 0.0 <= evaluate.quick_accuracy(model, tok, rows(4)) <= 1.0


def test_interrupted_run_resumes_from_finished_samples(toy_dir, tmp_path, monkeypatch):
    path = write_suite(tmp_path / "s.yaml", batch_size=3)
    out = str(tmp_path / "out")
    cfg = evaluate.load_suite(path)
    full, _ = evaluate.run_suite(cfg, toy_dir, "none", out=str(tmp_path / "full"))

    real, calls = evaluate.run_batch, []

    def flaky(model, tok, batch, cfg):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(model, tok, batch, cfg)
    monkeypatch.setattr(evaluate, "run_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        evaluate.run_suite(cfg, toy_dir, "none", out=out)
    partial = glob.glob(os.path.join(out, "samples.partial.rank0.jsonl"))
    assert partial and sum(1 for _ in open(partial[0])) == 6  # two finished batches of 3
    with open(partial[0], "a") as f:
        f.write('{"key": "arith/torn')  # a process killed mid-line
    calls.clear()
    monkeypatch.setattr(evaluate, "run_batch", lambda *a: (calls.append(len(a[2])), real(*a))[1])
    report, _ = evaluate.run_suite(cfg, toy_dir, "none", out=out)
    assert report["resumed_samples"] == 6 and sum(calls) == 12 - 6
    assert [s["id"] for s in read_samples(out)] == [s["id"] for s in read_samples(str(tmp_path / "full"))]
    assert report["dataset_fingerprint"] == full["dataset_fingerprint"]


def test_partial_samples_of_other_settings_are_set_aside_not_reused(toy_dir, tmp_path, monkeypatch, capsys):
    path = write_suite(tmp_path / "s.yaml", batch_size=3)
    out = str(tmp_path / "out")
    real = evaluate.run_batch
    calls = []

    def stop_after_one(*a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a)
    monkeypatch.setattr(evaluate, "run_batch", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        evaluate.run_suite(evaluate.load_suite(path), toy_dir, "none", out=out)
    monkeypatch.setattr(evaluate, "run_batch", real)
    report, _ = evaluate.run_suite(evaluate.load_suite(path, ["max_new_tokens=5"]), toy_dir, "none", out=out)
    assert report["resumed_samples"] == 0
    assert "not reused" in capsys.readouterr().err
    assert glob.glob(os.path.join(out, "stale-*", "samples.partial.rank0.jsonl"))


# --- compare and the gate --------------------------------------------------------------------
def fake_report(tmp_path, name, outcomes, fingerprint="f" * 16, split="test"):
    """A report.json whose per-problem outcomes are `outcomes` (one 0/1 per problem)."""
    samples = [sample(f"p{i}", bool(c), split=split) for i, c in enumerate(outcomes)]
    summary = evaluate.summarize(samples)
    report = {"suite": "t", "splits": {split: summary}, "overall": summary, "dataset_fingerprint": fingerprint,
              "accuracy": summary["accuracy"], "samples_path": "samples.jsonl",
              "per_problem": {f"{split}/p{i}": [int(c)] for i, c in enumerate(outcomes)}}
    d = tmp_path / name
    d.mkdir()
    (d / "report.json").write_text(json.dumps(report))
    (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return str(d / "report.json"), report


def test_compare_gives_the_paired_difference_and_tests(tmp_path, capsys):
    a, _ = fake_report(tmp_path, "a", [0] * 30 + [1] * 70)
    b, _ = fake_report(tmp_path, "b", [1] * 30 + [1] * 70)  # B fixes 30 problems, breaks none
    result = evaluate.compare(a, b)
    row = result["rows"][0]
    assert row["diff"] == pytest.approx(0.3) and row["lo"] > 0 and row["p_value"] < 0.01
    assert row["mcnemar_b01"] == 30 and row["mcnemar_b10"] == 0 and row["mcnemar_p"] < 1e-6
    cli.main(["eval", "compare", a, b])
    out = capsys.readouterr().out
    assert "+0.300" in out and "McNemar" in out
    assert evaluate.compare(a, b, metric="chain_valid")["rows"][0]["diff"] == pytest.approx(0.3)


def test_compare_refuses_reports_from_different_datasets(tmp_path, capsys):
    a, _ = fake_report(tmp_path, "a", [1, 0, 1])
    b, _ = fake_report(tmp_path, "b", [1, 0, 1], fingerprint="0" * 16)
    c, _ = fake_report(tmp_path, "c", [1, 0, 1, 1], fingerprint=None)
    for other in (b, c):
        with pytest.raises(SystemExit) as e:
            cli.main(["eval", "compare", a, other])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "different problems" in err and "\n" not in err
    with pytest.raises(SystemExit):
        cli.main(["eval", "compare", a, str(tmp_path / "missing.json")])
    assert "report not found" in capsys.readouterr().err


def test_gate_passes_within_the_interval_and_fails_beyond_it(tmp_path):
    _, base = fake_report(tmp_path, "base", [1] * 80 + [0] * 20)
    _, same = fake_report(tmp_path, "same", [1] * 78 + [0] * 22)
    _, worse = fake_report(tmp_path, "worse", [1] * 55 + [0] * 45)
    baseline = evaluate.make_baseline(base)
    assert evaluate.check_gate(same, baseline, ["accuracy"]) == []
    failures = evaluate.check_gate(worse, baseline, ["accuracy"])
    assert failures and any("overall.accuracy" in f and "0.2500 below the baseline 0.8000" in f for f in failures)
    # a lower-is-better metric fails when it rises
    worse["overall"]["extraction_failed"], worse["overall"]["extraction_failed_ci"] = 0.5, [0.4, 0.6]
    assert any("extraction_failed" in f and "above" in f for f in evaluate.check_gate(worse, baseline, ["extraction_failed"]))
    assert evaluate.check_gate(same, None, (), {"accuracy": 0.9})[0].startswith("overall.accuracy = 0.7800 is below")
    assert evaluate.check_gate(same, None, (), {"splits.test.accuracy": 0.5}) == []
    other = dict(same, dataset_fingerprint="0" * 16)
    with pytest.raises(evaluate.EvalError, match="other problems"):
        evaluate.check_gate(other, baseline, ["accuracy"])


def test_gate_exit_codes_from_the_command_line(toy_dir, tmp_path, capsys):
    path = write_suite(tmp_path / "s.yaml")
    out = str(tmp_path / "run")
    cli.main(["eval", path, "--model", toy_dir, "--out", out])
    report = json.load(open(os.path.join(out, "report.json")))
    cli.main(["eval", "baseline", os.path.join(out, "report.json"), str(tmp_path / "b.json")])
    cli.main(["eval", path, "--model", toy_dir, "--out", out, "--baseline", str(tmp_path / "b.json")])
    assert "gate: passed" in capsys.readouterr().out
    better = json.load(open(tmp_path / "b.json"))  # a baseline the toy model cannot meet
    better["metrics"]["overall.extraction_failed"] = [0.0, 0.0, 0.0]
    (tmp_path / "hi.json").write_text(json.dumps(better))
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", path, "--model", toy_dir, "--out", out, "--baseline", str(tmp_path / "hi.json")])
    assert e.value.code == 1
    assert "gate: overall.extraction_failed = 1.0000 is 1.0000 above the baseline" in capsys.readouterr().err
    better["dataset_fingerprint"] = "0" * 16
    (tmp_path / "other.json").write_text(json.dumps(better))
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", path, "--model", toy_dir, "--out", out, "--baseline", str(tmp_path / "other.json")])
    assert e.value.code == 2 and "other problems" in capsys.readouterr().err
    assert report["overall"]["n"] == 12


# --- sharding over processes -----------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_eval_equals_one_process(toy_dir, tmp_path):
    path = write_suite(tmp_path / "s.yaml", batch_size=3, samples=2, temperature=0.8)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    subprocess.run([sys.executable, "-m", "reasonlm", "eval", path, "--model", toy_dir, "--out", one],
                   env=env, check=True, capture_output=True, cwd=ROOT)
    # `accelerate launch --cpu --num_processes 2` starts ONE process without MPI (accelerate 1.15);
    # the torchrun launcher behind --multi_gpu starts two, and evaluate forms a gloo CPU group
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(free_port()), "-m", "reasonlm", "eval", path, "--model", toy_dir,
                        "--out", two], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("### toy:") == 1  # only the main process prints
    a, b = read_samples(one), read_samples(two)
    assert [(s["id"], s["sample"], s["output"]) for s in a] == [(s["id"], s["sample"], s["output"]) for s in b]
    ra, rb = (json.load(open(os.path.join(d, "report.json"))) for d in (one, two))
    assert rb["processes"] == 2 and ra["splits"] == rb["splits"] and ra["per_problem"] == rb["per_problem"]


# --- the benchmark script --------------------------------------------------------------------
def test_bench_generate_smoke():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval", "bench_generate.py"), "--toy", "--n", "6"],
                       env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = [l for l in r.stdout.splitlines() if l.startswith("| toy")][0]
    assert row.endswith("| yes |") and "x |" in row
