"""The pipeline with an `rl:` section: RL after SFT, eval-rl on the same splits, the length ladder
for SFT, SFT+RL and direct, and the report's rl block, SFT+RL column, ladder table and plot.
Also the RL stage's bad input through the CLI (one line, exit 2) and importer problems.

The end-to-end run is a tiny recipe with tiny step counts (~30 s on 2 cores: slow); the report's
rendering and the ladder's settings are checked on hand-made inputs (fast)."""
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from reasonlm import cli, rl
from reasonlm.rl.pool import ProblemPool
from reasonlm.config import CurriculumConfig, RLConfig, RunPaths, load_recipe
from reasonlm.credit import RewardError, preflight
from reasonlm.evaluate.report import markdown, plot
from reasonlm.config import OUTPUT_NEUTRAL, config_hash
from reasonlm.pipeline import ladder_config
from reasonlm.tasks import get_task
from tests.helpers import ROOT, TINY_RECIPE

FIXTURE = os.path.join(ROOT, "data", "fixtures", "gsm8k_sample.jsonl")

TINY = {**TINY_RECIPE, "eval": {**TINY_RECIPE["eval"], "ladder_per_steps": 2},
        "rl": {"n_steps": [3, 4], "rounds": 2, "prompts_per_round": 2, "num_generations": 2, "max_completion_length": 24,
               "save_every": 0, "preflight_problems": 2, "reward": "process"}}


def by_steps_bucket(accuracy, n=4):
    return {"n": n, "n_samples": n, "accuracy": accuracy, "accuracy_ci": [max(0.0, accuracy - .1), min(1.0, accuracy + .1)]}


def test_report_shows_sft_rl_and_direct_by_steps_and_up_the_ladder(tmp_path):
    split = {"n": 8, "accuracy": 0.5, "by_steps": {"2": by_steps_bucket(1.0), "3": by_steps_bucket(0.25)}}
    report = {"suite": "eval", "splits": {"test": split}, "overall": split, "accuracy": 0.5, "ood_accuracy": None,
              "rl": {"accuracy": 0.75, "ood_accuracy": None,
                     "splits": {"test": {"by_steps": {"2": by_steps_bucket(1.0), "3": by_steps_bucket(0.5)}}}},
              "direct": {"accuracy": 0.125, "ood_accuracy": None,
                         "splits": {"test": {"by_steps": {"2": by_steps_bucket(0.25), "3": by_steps_bucket(0.0)}}}},
              "ladder": {"family": "arithmetic", "steps": [2, 4], "n_per_steps": 4, "trained_steps": 2,
                         "models": {"SFT": {"2": by_steps_bucket(1.0), "3": by_steps_bucket(0.25), "4": by_steps_bucket(0.0)},
                                    "SFT+RL": {"2": by_steps_bucket(1.0), "3": by_steps_bucket(0.75), "4": by_steps_bucket(0.5)},
                                    "direct": {"2": by_steps_bucket(0.25), "3": by_steps_bucket(0.0), "4": by_steps_bucket(0.0)}}}}
    md = markdown(report)
    assert "| source | n_steps | problems | accuracy | SFT+RL accuracy | direct accuracy |" in md
    assert "| test | 3 | 4 | 0.250 [0.150, 0.350] | 0.500 | 0.000 |" in md
    assert "| n_steps | SFT | SFT+RL | direct |" in md
    assert "| 2 | 1.000 [0.900, 1.000] | 1.000 [0.900, 1.000] | 0.250 [0.150, 0.350] |" in md
    assert "| **4** | 0.000 [0.000, 0.100] | 0.500 [0.400, 0.600] | 0.000 [0.000, 0.100] |" in md  # past training
    assert "SFT+RL 0.75 / None; direct baseline 0.125 / None" in md
    assert plot(report, str(tmp_path / "ladder.png")) and (tmp_path / "ladder.png").stat().st_size > 0


def test_the_ladder_runs_from_2_to_twice_the_longest_trained_chain_of_the_recipes_family(tmp_path):
    recipe = load_recipe(os.path.join(ROOT, "recipes", "tiny-cpu.yaml"), [f"out_dir={tmp_path}", "eval.ladder_steps=[]"])
    cfg = ladder_config(recipe, recipe.eval, RunPaths(str(tmp_path)))
    (source,) = cfg.sources
    assert source["task"] == "arithmetic" and source["args"] == recipe.data.tasks[0]["args"]  # not arithmetic_step
    assert source["steps"] == [2, 12] and source["n_per_steps"] == 50 and source["exclude_from"] == str(tmp_path / "data")
    assert cfg.temperature == 0 and cfg.samples == 1 and cfg.max_new_tokens == 0  # greedy, budget from the question
    assert ladder_config(recipe, load_recipe(None, ["eval.ladder_per_steps=0"]).eval, RunPaths(str(tmp_path))) is None
    # eval.ladder_steps sets its range (the recipe's: 2-16); changing it reruns the ladders (their
    # source), not the held-out eval
    shipped = load_recipe(os.path.join(ROOT, "recipes", "tiny-cpu.yaml"), [f"out_dir={tmp_path}"])
    assert ladder_config(shipped, shipped.eval, RunPaths(str(tmp_path))).sources[0]["steps"] == [2, 16]
    longer = load_recipe(os.path.join(ROOT, "recipes", "tiny-cpu.yaml"), [f"out_dir={tmp_path}", "eval.ladder_steps=[2, 24]"])
    assert ladder_config(longer, longer.eval, RunPaths(str(tmp_path))).sources[0]["steps"] == [2, 24]
    assert config_hash(longer.eval) == config_hash(shipped.eval)
    assert config_hash(ladder_config(longer, longer.eval, RunPaths(str(tmp_path)))) != config_hash(cfg)


def test_rl_without_a_curriculum_hashes_as_before_the_setting_existed():
    """A finished RL stage of a recipe without rl.curriculum stays finished (the pipeline skips it)."""
    plain = RLConfig()
    settings = {k: v for k, v in dataclasses.asdict(plain).items() if k not in OUTPUT_NEUTRAL | {"curriculum"}}
    assert config_hash(plain) == hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    curriculum = RLConfig(probe_every=2, curriculum=CurriculumConfig())
    assert config_hash(curriculum) != config_hash(dataclasses.replace(curriculum, curriculum=CurriculumConfig(max=20)))


def test_the_report_lists_the_curriculums_moves():
    moves = [{"round": 4, "from": [9, 12], "to": [10, 13], "probe_accuracy": 0.92}]
    report = {"suite": "eval", "splits": {}, "training": {"rl": {"curriculum": {
        "start": [9, 12], "range": [10, 13], "max": 16, "grow_when": 0.9, "moves": moves}}}}
    md = markdown(report)
    assert "RL length curriculum: lengths [9, 12] -> [10, 13] (max 16)" in md
    assert "| after round | from | to | frontier probe accuracy |\n|---|---|---|---|\n| 4 | [9, 12] | [10, 13] | 0.920 |" in md
    report["training"]["rl"]["curriculum"].update(range=[9, 12], moves=[])
    assert "The frontier never reached it: no move." in markdown(report)


def test_rl_draws_an_importers_problems_of_the_requested_lengths():
    task = get_task("gsm8k", path=FIXTURE)
    cfg = RLConfig(n_steps=[2, 2], reward="process", preflight_problems=4)
    records = rl.imported_problems(task, cfg)
    assert records and all(ex.n_steps == 2 for ex in records)
    preflight(task, cfg, records)  # GSM8K's checker judges the equations of every step
    pool = ProblemPool(task, cfg, None, records)
    first = [ex.question for ex, _ in pool.draw(len(records))]
    assert sorted(first) == sorted(ex.question for ex in records)  # one pass covers every record once
    again = ProblemPool(task, cfg, pool.state(), records)
    assert [ex for ex, _ in again.draw(3)] == [ex for ex, _ in pool.draw(3)]  # the order is a function of the state


def test_reward_process_on_answer_only_problems_is_refused_and_outcome_is_not(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"q": "What is 2+3?", "a": "5"}\n{"q": "What is 4+4?", "a": "8"}\n')
    task = get_task("records", path=str(path), columns={"question": "q", "answer": "a"})
    records = rl.imported_problems(task, RLConfig())  # answer-only: no length to filter on
    assert len(records) == 2
    with pytest.raises(RewardError, match="no steps to check, so reward process"):
        preflight(task, RLConfig(reward="process"), records)
    preflight(task, RLConfig(reward="outcome"), records)


def rl_cli(tmp_path, capsys, *overrides):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "run")}))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["rl", str(recipe), *overrides])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_rl_input_is_one_line_through_the_cli(tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"q": "What is 2+3?", "a": "5"}\n')
    records = {"name": "records", "args": {"path": str(answers), "columns": {"question": "q", "answer": "a"}}}
    assert "reward process" in rl_cli(tmp_path, capsys, f"rl.task={json.dumps(records)}", "rl.reward=process")
    assert "rl.num_generations must be >= 2" in rl_cli(tmp_path, capsys, "rl.num_generations=1")
    gsm8k = {"name": "gsm8k", "args": {"path": FIXTURE}}
    line = rl_cli(tmp_path, capsys, f"rl.task={json.dumps(gsm8k)}", "rl.n_steps=[20,30]")
    assert "none of its 12 problems has 20-30 steps" in line
    assert rl_cli(tmp_path, capsys, f"rl.task={json.dumps(gsm8k)}", "rl.n_steps=[2,2]", "rl.probe_every=1",
                  "rl.curriculum={start: [2, 3]}") == ("error: rl.curriculum needs a generated task family (it makes "
                                                       "problems of any length); gsm8k is an importer, whose problems "
                                                       "have the lengths they have")
    assert "makes no problems of 7 steps" in rl_cli(tmp_path, capsys, 'rl.task={"name": "arithmetic_step"}',
                                                    "rl.n_steps=[7,8]")
    adapter = tmp_path / "other-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "/models/other"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"")  # refused for its base before it is read
    line = rl_cli(tmp_path, capsys, f"rl.adapter={adapter}", f"rl.model={tmp_path / 'base'}")
    assert "trained on /models/other, not on" in line


@pytest.mark.slow
def test_pipeline_with_rl_reports_eval_rl_and_the_ladder(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "run")}))
    cli.main(["pipeline", str(recipe)])
    out = capsys.readouterr().out
    stages = ["data", "base", "train", "eval", "ladder", "train_direct", "eval_direct", "ladder_direct", "rl",
              "eval_rl", "ladder_rl"]
    assert [s for s in stages if f"== {s} done in" in out] == stages
    run = tmp_path / "run"
    report = json.loads((run / "eval" / "report.json").read_text())
    assert list(report["splits"]) == ["test", "test_ood"]  # the ladder is its own eval: these are unchanged
    assert set(report["rl"]) == {"accuracy", "ood_accuracy", "by_steps", "splits"}
    assert list(report["rl"]["splits"]) == ["test", "test_ood"]
    rl_report = json.loads((run / "eval-rl" / "report.json").read_text())
    assert rl_report["adapter"] == str(run / "rl" / "adapter") and report["rl"]["accuracy"] == rl_report["accuracy"]
    ladder = report["ladder"]
    assert ladder["steps"] == [2, 6] and ladder["trained_steps"] == 3 and ladder["family"] == "arithmetic"
    assert list(ladder["models"]) == ["SFT", "direct", "SFT+RL"]
    for by_steps in ladder["models"].values():
        assert sorted(by_steps, key=int) == ["2", "3", "4", "5", "6"] and all(b["n"] == 2 for b in by_steps.values())
    md = (run / "eval" / "report.md").read_text()
    assert "SFT+RL accuracy" in md and "Length ladder: 2 fresh arithmetic problems" in md
    assert (run / "eval" / "accuracy_by_steps.png").exists() and "rl" in report["training"]
    assert len((run / "rl" / "metrics.jsonl").read_text().splitlines()) == 2
    # a second run skips every stage, RL and the ladders included
    cli.main(["pipeline", str(recipe)])
    out = capsys.readouterr().out
    assert all(f"== {s}: up to date" in out for s in stages), out


@pytest.mark.slow
def test_rl_on_two_processes_samples_and_trains_like_one(tmp_path):
    """`accelerate launch --cpu --num_processes 2 -m reasonlm rl`: every process samples every other
    batch of rows, the rollouts are gathered, the update's micro-batches are split between the
    processes and the gradients summed. A near-random policy whose completions sometimes end in the
    budget and sometimes not (truncation_penalty) gives GRPO a signal to train on."""
    import subprocess
    import sys
    from safetensors.torch import load_file
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "run")}))
    for stage in ("data", "base", "train"):
        cli.main([stage, str(recipe)])
    run = tmp_path / "run"
    common = [str(recipe), f"rl.adapter={run / 'train' / 'adapter'}", f"rl.model={run / 'base'}", "rl.reward=outcome",
              "rl.truncation_penalty=1.0", "rl.n_steps=[1,2]", "rl.rounds=3", "rl.prompts_per_round=8",
              "rl.num_generations=4", "rl.sample_batch_size=4", "rl.micro_batch_size=2", "rl.mini_batch_size=8",
              "rl.num_iterations=2", "rl.temperature=1.0", "rl.lr=1e-2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    launch = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--cpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "reasonlm"]
    plain = [sys.executable, "-m", "reasonlm", "rl"]
    for name, cmd, extra in (("one", plain, []), ("two", [*launch, "rl"], []),
                             ("own", plain, ["rl.processes=2"])):  # the stage starts its 2 processes itself
        r = subprocess.run([*cmd, *common, *extra, f"out_dir={tmp_path / name}"], env=env, capture_output=True,
                           text=True, cwd=ROOT, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"{1 if name == 'one' else 2} process(es)" in r.stdout and "Traceback" not in r.stderr
    one, two, own = ([json.loads(line) for line in (tmp_path / d / "rl" / "metrics.jsonl").read_text().splitlines()]
                     for d in ("one", "two", "own"))
    assert [{k: v for k, v in r.items() if k not in {"tokens_per_s", "samples_per_s", "sample_s", "update_s"}}
            for r in two] == [{k: v for k, v in r.items() if k not in {"tokens_per_s", "samples_per_s", "sample_s",
                                                                       "update_s"}} for r in own]
    assert len(one) == len(two) == 3 and sum(r["trained_sequences"] for r in one) > 0
    timing, update = {"tokens_per_s", "samples_per_s", "sample_s", "update_s"}, {"loss", "kl", "entropy", "ratio_min",
                                                                                 "ratio_max", "clip_fraction"}
    sampled = one[0].keys() - timing - update
    assert {k: one[0][k] for k in sampled} == {k: two[0][k] for k in sampled}  # round 1: the same samples
    assert all(one[0][k] == pytest.approx(two[0][k], rel=1e-4, abs=1e-6) for k in update), (one[0], two[0])
    # later rounds sample from weights equal up to float summation order (2e-5); both runs are
    # seeded and deterministic, so every round draws the same samples and ends on the same weights.
    # (Should a near-tie ever flip a token on some platform, this fails here, at the round it flipped.)
    for a, b in zip(one, two):
        assert {k: a[k] for k in sampled} == {k: b[k] for k in sampled}, (a, b)
    a, b = (load_file(tmp_path / d / "rl" / "adapter" / "adapter_model.safetensors") for d in ("one", "two"))
    start = load_file(run / "train" / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(a[k], start[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=2e-5)


@pytest.mark.slow
def test_a_resumed_rl_run_logs_each_round_once(tmp_path, capsys):
    """The rounds after the last checkpoint run again on resume: metrics.jsonl and completions.jsonl
    keep one record per round (the rerun's), not the killed run's copies too."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "run")}))
    for stage in ("data", "base", "train"):
        cli.main([stage, str(recipe)])
    rl_args = ["rl", str(recipe), "rl.rounds=3", "rl.save_every=1", "rl.log_completions=1"]
    cli.main(rl_args)  # checkpoints after rounds 1 and 2; a second run resumes after round 2
    cli.main(rl_args)
    assert "resuming from" in capsys.readouterr().out
    for log in ("metrics.jsonl", "completions.jsonl"):
        rounds = [json.loads(line)["round"] for line in (tmp_path / "run" / "rl" / log).read_text().splitlines()]
        assert rounds == [1, 2, 3], (log, rounds)


@pytest.mark.slow
def test_a_failing_process_ends_the_group_with_its_exit_code(tmp_path):
    """reasonlm/processes.py: the group's exit code is the failure's (2: one line from the stage),
    with no launcher traceback, and no process is left behind."""
    import subprocess
    import sys
    code = ("import sys; from reasonlm.processes import run_processes; "
            f"sys.exit(run_processes(2, ['rl', {str(tmp_path / 'missing.yaml')!r}], 1))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "missing.yaml" in r.stderr


@pytest.mark.slow
def test_sigkill_mid_curriculum_then_resume_gives_bitwise_identical_weights(tmp_path, capsys):
    """RL with a curriculum that moves at every probe (the probe scripted to pass: the toy model
    solves nothing), killed right after its round-2 checkpoint, resumed: the same moves and the same
    adapter, bit for bit, as a run never killed. A max past the toy model's context is one line."""
    from safetensors.torch import load_file
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "run")}))
    for stage in ("data", "base", "train"):
        cli.main([stage, str(recipe)])
    run = tmp_path / "run"
    capsys.readouterr()
    line = rl_cli(tmp_path, capsys, "rl.probe_every=1", "rl.curriculum={start: [1, 2], max: 40}")
    assert line.startswith("error: rl.curriculum.max is 40, but the longest of 20 40-step arithmetic chains takes ") \
        and "more than the model's context of 256: it holds up to " in line, line
    common = [str(recipe), f"rl.adapter={run / 'train' / 'adapter'}", f"rl.model={run / 'base'}", "rl.n_steps=[1,2]",
              "rl.rounds=4", "rl.save_every=2", "rl.probe_every=1", "rl.max_completion_length=48", "rl.lr=1e-2",
              "rl.reward=outcome", "rl.truncation_penalty=1.0", "rl.temperature=1.0",
              "rl.curriculum={start: [1, 2], max: 4, probe_problems: 2, replay: 0.5}"]
    driver = ("import sys; from reasonlm import cli, rl; real = rl.run_probe; "
              "rl.run_probe = lambda *a: {k: 1.0 for k in real(*a)}; cli.main(sys.argv[1:])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = lambda out: [sys.executable, "-c", driver, "rl", *common, f"out_dir={out}"]
    for name in ("ref", "killed"):
        for folder in ("data", "base", "train"):
            os.makedirs(tmp_path / name, exist_ok=True)
            os.symlink(run / folder, tmp_path / name / folder)
    subprocess.run(cmd(tmp_path / "ref"), env=env, check=True, capture_output=True, cwd=ROOT, timeout=600)
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=ROOT)
    rl_dir = tmp_path / "killed" / "rl"
    deadline = time.time() + 300
    while not list(rl_dir.glob("checkpoint-*2")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(rl_dir.glob("checkpoint-*2")) and not (rl_dir / "adapter").exists(), "killed after round 2, before the end"
    r = subprocess.run(cmd(tmp_path / "killed"), env=env, check=True, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert "resuming from" in r.stdout + r.stderr
    ref, killed = (json.loads((tmp_path / d / "rl" / "rl_stats.json").read_text())["curriculum"] for d in ("ref", "killed"))
    assert ref == killed and [m["to"] for m in ref["moves"]] == [[2, 3], [3, 4]] and ref["range"] == [3, 4]
    metrics = [json.loads(x) for x in (rl_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2, 3, 4]
    assert [m["curriculum_range"] for m in metrics] == [[1, 2], [2, 3], [3, 4], [3, 4]]
    a, b = (load_file(tmp_path / d / "rl" / "adapter" / "adapter_model.safetensors") for d in ("ref", "killed"))
    start = load_file(run / "train" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], start[k]) for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- issue 30, fault 2 and the RL fault injection ----------------------------------------------
def rl_run(tmp_path, capsys):
    """A tiny run's data, base and SFT adapter; returns (recipe, run directory)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "run")}))
    for stage in ("data", "base", "train"):
        cli.main([stage, str(recipe)])
    capsys.readouterr()
    return str(recipe), tmp_path / "run"


@pytest.mark.slow
def test_rl_never_resumes_a_checkpoint_made_from_other_settings_or_another_adapter(tmp_path, capsys):
    """After an RL run, `reasonlm rl` with another rl.lr, or after SFT was trained again, once
    resumed the old rl/checkpoint-* (the old adapter, the old rate) while rl/config.yaml claimed the
    new one: now one line, exit 2, rl/ as it was; rl.resume=never starts over."""
    from tests.test_outputs import one_line_error, run_cli, tree
    recipe, run = rl_run(tmp_path, capsys)
    args = ["rl", recipe, "rl.rounds=3", "rl.save_every=1"]
    assert run_cli(capsys, *args)[0] == 0  # checkpoints after rounds 1 and 2
    before, newest = tree(run / "rl"), run / "rl" / "checkpoint-0000002"
    code, err = run_cli(capsys, *args, "rl.lr=1e-3")
    assert code == 2 and f"error: {newest} was made from other settings than this run's" in one_line_error(err)
    assert tree(run / "rl") == before
    assert run_cli(capsys, "train", recipe, "train.lr=1e-3")[0] == 0  # SFT trained again: another adapter
    code, err = run_cli(capsys, *args)
    assert code == 2 and f"error: {newest} was made from other adapter than this run's" in one_line_error(err)
    assert "set rl.resume=never to start over" in err and tree(run / "rl") == before
    code, err = run_cli(capsys, *args, "rl.processes=2")  # refused before rl/recipe.yaml is written
    assert code == 2 and f"{newest} was made from other adapter" in one_line_error(err) and tree(run / "rl") == before
    cli.main([*args, "rl.resume=never"])
    assert "resuming" not in capsys.readouterr().out
    cli.main(args)  # the new run's checkpoints: resumed
    assert f"resuming from {newest}" in capsys.readouterr().out


@pytest.mark.slow
def test_rl_killed_anywhere_in_a_round_resumes_to_the_same_adapter_bit_for_bit(tmp_path, capsys):
    """SIGKILL `reasonlm rl` while it writes a checkpoint and at random points of later rounds
    (sampling, the update), resume each time: the final adapter equals an uninterrupted run's bit
    for bit, each round is logged once, and nothing half-written is left (no *.tmp, no checkpoint
    without its train_state.json)."""
    import random
    import shutil
    import signal
    import subprocess
    import sys
    import time
    from safetensors.torch import load_file
    recipe, run = rl_run(tmp_path, capsys)
    rounds = 6
    args = [sys.executable, "-m", "reasonlm", "rl", recipe, f"rl.rounds={rounds}", "rl.save_every=1", "rl.keep_last=2",
            "rl.prompts_per_round=4", "rl.num_generations=4", "rl.max_completion_length=32", "rl.reward=outcome"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    shutil.copytree(run, tmp_path / "ref")
    ref = subprocess.run([*args, f"out_dir={tmp_path / 'ref'}"], env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    rl_dir, rng = run / "rl", random.Random(0)

    def checkpoints():
        return sorted(p.name for p in rl_dir.iterdir() if p.name.startswith("checkpoint-")) if rl_dir.exists() else []

    def kill(when: str) -> str | None:
        """Start the run and SIGKILL it: 'write' while a checkpoint-*.tmp exists; 'round' a random
        0-300 ms after a new checkpoint appears (inside the next round). Returns where it was
        killed ('write', 'round', 'elsewhere'), None when it finished first."""
        hit = "elsewhere"
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen, deadline = set(checkpoints()), time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            names = checkpoints()
            if when == "write" and any(n.endswith(".tmp") for n in names):
                hit = "write"
                break
            if when == "round" and [n for n in names if not n.endswith(".tmp") and n not in seen]:
                time.sleep(rng.uniform(0, 0.3))
                hit = "round"
                break
            time.sleep(0.0005)
        proc.send_signal(signal.SIGKILL)
        return hit if proc.wait() == -signal.SIGKILL else None

    killed = [kill(when) for when in ("write", "round", "write", "round", "round")]
    print("killed:", killed)
    assert "write" in killed and "round" in killed, killed
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    a = load_file(tmp_path / "ref" / "rl" / "adapter" / "adapter_model.safetensors")
    b = load_file(rl_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stale = [os.path.join(d, n) for d, dirs, files in os.walk(run) for n in dirs + files if n.endswith(".tmp")]
    assert not stale, stale
    assert all((rl_dir / c / "train_state.json").exists() for c in checkpoints())
    for log in ("metrics.jsonl", "completions.jsonl"):
        logged = [json.loads(line)["round"] for line in (rl_dir / log).read_text().splitlines()]
        assert sorted(set(logged)) == list(range(1, rounds + 1)) and len(logged) == len(set(logged)) * (
            1 if log == "metrics.jsonl" else len(logged) // rounds), (log, logged)
