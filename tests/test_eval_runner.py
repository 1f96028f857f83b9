import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from reasonlm import cli, evaluate
from reasonlm.answer import cut_at_stop, stop_token_ids
from reasonlm.config import EvalConfig, Recipe
from reasonlm.processes import free_port
from reasonlm.engine import KVCacheEngine, SamplingParams
from reasonlm.evaluate.runner import build_prompt, make_batches, plan_jobs
from reasonlm.sources import Source
from tests.eval_helpers import examples, read_samples, toy_dir, write_suite  # noqa: F401 (fixtures)
from tests.helpers import ROOT, TINY_TASK, rows, tiny_model_and_tokenizer

torch.set_num_threads(1)


# --- generation through the engine ------------------------------------------------------------
def generate(model, tok, prompts, budgets, batch_size=64, stop_ids=frozenset(), **params):
    engine = KVCacheEngine(model, tok.pad_token_id, set(stop_ids), decode=lambda ids: tok.decode(ids, skip_special_tokens=True))
    return engine.generate(prompts, SamplingParams(max_new_tokens=budgets, batch_size=batch_size, **params))


def test_batched_greedy_equals_one_at_a_time_and_hf_generate(toy):
    model, tok = toy
    exs = examples(10, seed=1)
    prompts = [build_prompt(tok, ex.question)[1] for ex in exs]
    budgets = [6 + 4 * ex.n_steps for ex in exs]  # different budgets in one batch
    stops, pad = stop_token_ids(tok), tok.pad_token_id
    batched = generate(model, tok, prompts, budgets, 4, stops)
    alone = [generate(model, tok, [p], [b], 1, stops)[0] for p, b in zip(prompts, budgets)]
    assert batched == alone
    for p, b, ours in list(zip(prompts, budgets, batched))[:3]:
        x = torch.tensor([p])
        y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=b, do_sample=False,
                           eos_token_id=sorted(stops), pad_token_id=pad)[0, len(p):].tolist()
        assert ours == [t for t in y[:next((i for i, t in enumerate(y) if t in stops), len(y))]]


def test_the_engine_uses_the_supported_cache_argument(toy):
    """transformers 5.x renamed the forward's `past_key_values` to `cache` (the old name warns and
    is removed in 5.40): batched and streamed decoding, on the model and under a LoRA adapter,
    emit no deprecation warning."""
    import warnings
    from peft import LoraConfig, get_peft_model
    model, tok = toy
    prompt = build_prompt(tok, examples(1, seed=2)[0].question)[1]
    lora = get_peft_model(tiny_model_and_tokenizer()[0], LoraConfig(r=2, target_modules=["q_proj"])).eval()
    for m in (model, lora):
        engine = KVCacheEngine(m, tok.pad_token_id)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            engine.generate([prompt, prompt[:-2]], SamplingParams(max_new_tokens=4))
            stream = engine.stream()
            stream.generate(prompt, SamplingParams(max_new_tokens=3))
            stream.generate(prompt + [5], SamplingParams(max_new_tokens=3))  # prefix reuse: cache cropped


def test_budgets_and_early_exit(toy):
    model, tok = toy
    prompts = [build_prompt(tok, r["question"])[1] for r in rows(3)]
    out = generate(model, tok, prompts, [1, 5, 9], 3)
    assert [len(o) for o in out] == [1, 5, 9]


def test_stop_strings_end_generation_and_are_cut(toy):
    model, tok = toy
    prompt = build_prompt(tok, rows(1)[0]["question"])[1]
    free = generate(model, tok, [prompt], 20)[0]
    text = tok.decode(free, skip_special_tokens=True)
    stop = tok.decode(free[5:7], skip_special_tokens=True)
    assert stop and stop in text
    stopped = generate(model, tok, [prompt], 20, stop_strings=(stop,))[0]
    assert len(stopped) <= 7 and stopped == free[:len(stopped)]
    assert stop in tok.decode(stopped, skip_special_tokens=True)
    assert cut_at_stop("8+1=9\n#### 9\nQuestion: next", ["Question:"]) == "8+1=9\n#### 9\n"
    with pytest.raises(ValueError, match="decode"):
        KVCacheEngine(model, tok.pad_token_id).generate([prompt], SamplingParams(max_new_tokens=3, stop_strings=("x",)))


def test_per_row_seeds_make_samples_independent_of_the_batch(toy):
    model, tok = toy
    prompts = [build_prompt(tok, r["question"])[1] for r in rows(6, seed=2)]
    seeds = [11, 12, 13, 14, 15, 16]
    together = generate(model, tok, prompts, 10, 6, temperature=1.0, seeds=seeds)
    apart = [generate(model, tok, [p], 10, 1, temperature=1.0, seeds=[s])[0] for p, s in zip(prompts, seeds)]
    assert together == apart
    other = generate(model, tok, prompts, 10, 6, temperature=1.0, seeds=[s + 100 for s in seeds])
    assert other != together


def test_batches_are_the_same_for_any_number_of_processes(toy):
    _, tok = toy
    cfg = EvalConfig(samples=3, temperature=0.5, batch_size=5)
    source = Source("p", "rows", examples(7))
    jobs = plan_jobs([source], tok, cfg, "cot")
    batches = make_batches(jobs, 5)
    assert sorted(j.key for b in batches for j in b) == sorted(j.key for j in jobs) and len(jobs) == 21
    lengths = [len(j.ids) for b in batches for j in b]
    assert lengths == sorted(lengths)  # sorted by prompt length
    shards = [batches[r::2] for r in range(2)]
    assert sorted(id(b) for s in shards for b in s) == sorted(id(b) for b in batches)
    assert len({j.seed for j in jobs}) == 21  # every (problem, sample) has its own stream


# --- a whole run -----------------------------------------------------------------------------
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
    from reasonlm.data.writer import features
    ds = {s: Dataset.from_list([{**r, "id": f"{s}-{i}"} for i, r in enumerate(rows(6, steps=st, seed=i))],
                               features=features()) for i, (s, st) in enumerate([("test", (2, 3)), ("test_ood", (5, 6))])}
    DatasetDict(ds).save_to_disk(str(tmp_path / "data"))
    cfg = EvalConfig(model=toy_dir, adapter="none", max_new_tokens=10)
    report = evaluate.run(Recipe(out_dir=str(tmp_path), eval=cfg), name="eval")
    for key in ("accuracy", "ood_accuracy", "by_steps", "splits"):
        assert key in report
    assert set(report["splits"]) == {"test", "test_ood"} and set(report["by_steps"]) >= {"2", "5"}
    report["direct"] = {k: report[k] for k in ("accuracy", "ood_accuracy", "by_steps", "splits")}
    evaluate.write_outputs(str(tmp_path / "eval"), report, read_samples(str(tmp_path / "eval")), cfg)
    assert "direct accuracy" in evaluate.markdown(report)
    samples_before = open(tmp_path / "eval" / "samples.jsonl").read()
    evaluate.write_report(str(tmp_path / "eval"), report)  # the pipeline's way to add the direct baseline
    assert json.load(open(tmp_path / "eval" / "report.json"))["direct"]["accuracy"] == report["accuracy"]
    assert open(tmp_path / "eval" / "samples.jsonl").read() == samples_before


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


# --- sharding over processes -----------------------------------------------------------------
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
    # PYTHONPATH: the script imports the reasonlm of this checkout, not an installed one
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval", "bench_generate.py"), "--toy", "--n", "6"],
                       env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    table = {l.split(" | ")[0][2:]: l for l in r.stdout.splitlines() if l.startswith("| ") and "x |" in l}
    assert set(table) == {"HF generate, batched", "HF generate, one at a time", "engine, general path", "engine",
                          "engine, folded (RL's sampler)"}
    # the op-for-op paths equal batched generate bitwise; the folded one only up to rounding (near-ties may flip)
    assert all(row.endswith("| yes |") for name, row in table.items() if "folded" not in name)
    sampled = [l for l in r.stdout.splitlines() if "(vs batched sampling)" in l]
    assert [l.split(" | ")[0][2:] for l in sampled] == ["HF generate, batched, sampling",
                                                        "engine, folded, sampling (per-row seeds)"]


def test_bench_generate_rl_workload_is_one_round_of_the_recipe():
    """--rl RECIPE: rl.prompts_per_round problems of rl.n_steps steps, each num_generations times."""
    import importlib.util
    from reasonlm.config import load_recipe

    spec = importlib.util.spec_from_file_location("bench_generate", os.path.join(ROOT, "eval", "bench_generate.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    recipe = os.path.join(ROOT, "recipes", "tiny-cpu.yaml")
    rows, cfg = bench.rl_rows(recipe)
    assert cfg == load_recipe(recipe).rl
    assert len(rows) == cfg.prompts_per_round * cfg.num_generations
    questions = [r["question"] for r in rows]
    assert len(set(questions)) == cfg.prompts_per_round
    assert questions[:cfg.num_generations] == [questions[0]] * cfg.num_generations
    assert rows == bench.rl_rows(recipe)[0]  # seeded by rl.seed


def test_prompts_longer_than_the_context_are_skipped_and_counted(toy_dir, tmp_path, capsys):
    """The toy's context is 256 tokens: a 3,000-token question is skipped (too_long in the report,
    per source, and a warning) instead of being evaluated past the context; too_long=error stops
    with one line; a prompt that fits gets a budget cut to the room that is left."""
    problems = tmp_path / "p.jsonl"
    long_question = "1+" * 1500 + "1"
    problems.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "2+3", "answer": "5"}, {"question": long_question, "answer": "1501"},
        {"question": "1+" * 110 + "1", "answer": "111"}, {"question": "4-1", "answer": "3"}]))
    path = write_suite(tmp_path / "s.yaml", sources=[{"jsonl": str(problems), "name": "mixed"},
                                                     {"task": "arithmetic", "args": TINY_TASK, "steps": [1, 1],
                                                      "n_per_steps": 2, "name": "arith"}], max_new_tokens=200)
    out = str(tmp_path / "out")
    cli.main(["eval", path, "--model", toy_dir, "--out", out])
    captured = capsys.readouterr()
    assert "source 'mixed': skipped 1 problem(s) whose prompt is longer than the model's context (256 tokens)" \
        in captured.err
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["sources"]["mixed"]["too_long"] == 1 and report["sources"]["arith"]["too_long"] == 0
    assert report["splits"]["mixed"]["n"] == 3 and "mixed 1 problem(s)" in open(os.path.join(out, "report.md")).read()
    samples = {s["question"]: s for s in read_samples(out)}
    assert long_question not in samples
    near = samples["1+" * 110 + "1"]
    assert len(near["prompt"]) and near["tokens"] <= 256 - 200  # its budget was cut to the context's room
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", path, "--model", toy_dir, "--out", str(tmp_path / "out2"), "too_long=error"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after transformers' loading bar)
    assert e.value.code == 2 and err.startswith("error: source 'mixed', problem 'mixed-0000001': the prompt is")
    assert "context is 256" in err
