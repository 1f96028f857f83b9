"""train.report_to through Accelerate's trackers, loss.png, and eval's progress output.

TensorBoard runs for real (it is in the dev extra). wandb, trackio and mlflow are not installed
here and would need an account or a server: their modules are replaced by fakes that record
what Accelerate's own tracker classes (WandBTracker, TrackioTracker, MLflowTracker) call, so the
test checks the project, run name, hyperparameters and logged values that would leave the machine.
"""
import io
import json
import sys
import types

import pytest
import torch
import yaml
from accelerate import tracking as accelerate_tracking
from accelerate.utils import LoggerType

from reasonlm import base, cli, tracking, train
from reasonlm.config import TrainConfig
from reasonlm.evaluate import headline_metrics
from reasonlm.evaluate.progress import Progress
from tests.helpers import TINY_RECIPE, rows, tiny_model_and_tokenizer

CFG = dict(steps=3, batch_tokens=512, seq_len=128, lr=1e-3, warmup_steps=1, eval_every=0, eval_samples=0,
           log_every=1, save_every=0, lora_r=4, lora_alpha=8)


def fit_tiny(run_dir, report_to):
    torch.manual_seed(0)
    model, tok = tiny_model_and_tokenizer()
    cfg = TrainConfig(full_finetune=True, report_to=report_to, **CFG)
    accelerator = tracking.tracked_accelerator(report_to, str(run_dir), cpu=True)
    tracking.start_tracking(accelerator, str(run_dir), cfg)
    try:
        train.fit(model, tok, rows(64), rows(8, seed=1), cfg, str(run_dir), accelerator)
    finally:
        tracking.finish_tracking(accelerator)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_logged_metric_and_the_run_draws_its_loss_curve(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "out" / "train"
    (run_dir).mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"step": 7, "loss": 9.9}\n')  # a previous run's line: dropped
    records = fit_tiny(run_dir, ["tensorboard"])
    assert [r["step"] for r in records] == [1, 2, 3]
    assert (run_dir / "loss.png").read_bytes().startswith(b"\x89PNG")
    events = list((run_dir / "tb").rglob("events.out.tfevents*"))
    scalars = {}
    for path in events:
        acc = EventAccumulator(str(path)).Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, round(e.value, 5)) for e in acc.Scalars(tag)]
    assert scalars["loss"] == [(r["step"], pytest.approx(r["loss"], abs=1e-5)) for r in records]
    assert {"lr", "tokens_per_s", "val_loss"} <= set(scalars)


def test_no_trackers_writes_metrics_and_curve_only(tmp_path):
    run_dir = tmp_path / "train"
    run_dir.mkdir()
    fit_tiny(run_dir, [])
    assert sorted(p.name for p in run_dir.iterdir()) == ["best", "loss.png", "metrics.jsonl"]  # no tb/


class FakeRun:
    def __init__(self, calls, **init):
        self.calls = calls
        calls.append(("init", init))

    def log(self, values, step=None, **kwargs):
        self.calls.append(("log", dict(values), step))

    def finish(self):
        self.calls.append(("finish",))


def fake_wandb_like(calls):
    """wandb and trackio: init(project=..., name=...) -> run; config.update(...); run.log; run.finish."""
    module = types.ModuleType("fake")
    module.init = lambda **kw: FakeRun(calls, **kw)
    module.config = types.SimpleNamespace(update=lambda values, **kw: calls.append(("config", dict(values))))
    return module


def fake_mlflow(calls):
    module = types.ModuleType("mlflow")
    module.search_experiments = lambda filter_string: []
    module.create_experiment = lambda name, **kw: calls.append(("experiment", name)) or "1"
    module.start_run = lambda **kw: calls.append(("init", kw))
    module.log_params = lambda values: calls.append(("config", dict(values)))
    module.log_metrics = lambda values, step=None: calls.append(("log", dict(values), step))
    module.end_run = lambda: calls.append(("finish",))
    module.utils = types.SimpleNamespace(validation=types.SimpleNamespace(MAX_PARAM_VAL_LENGTH=6000,
                                                                            MAX_PARAMS_TAGS_PER_BATCH=100))
    return module


@pytest.mark.parametrize("name", ["wandb", "trackio", "mlflow"])
def test_hosted_trackers_get_the_run_its_settings_and_every_logged_record(tmp_path, monkeypatch, name):
    calls = []
    monkeypatch.setitem(sys.modules, name, fake_mlflow(calls) if name == "mlflow" else fake_wandb_like(calls))
    monkeypatch.setitem(tracking._INSTALLED, name, lambda: True)
    monkeypatch.setattr(accelerate_tracking, "_available_trackers",
                        [*accelerate_tracking._available_trackers, LoggerType(name)])
    run_dir = tmp_path / "tiny-cpu" / "train"
    run_dir.mkdir(parents=True)
    records = fit_tiny(run_dir, [name])

    init = next(c[1] for c in calls if c[0] == "init")
    if name == "mlflow":
        assert ("experiment", "reasonlm") in calls and init["run_name"] == "tiny-cpu/train"
    else:
        assert init == {"project": "reasonlm", "name": "tiny-cpu/train"}
    config = next(c[1] for c in calls if c[0] == "config")
    assert config["lr"] == 1e-3 and config["report_to"] == json.dumps([name]) and config["steps"] == 3
    logged = [(c[2], c[1]) for c in calls if c[0] == "log"]
    assert logged == [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in records]
    assert calls[-1] == ("finish",)


def test_a_missing_tracker_package_is_one_line(monkeypatch):
    monkeypatch.setitem(tracking._INSTALLED, "wandb", lambda: False)
    with pytest.raises(tracking.TrackingError, match=r"^train.report_to: wandb is not installed \(pip install wandb\)$"):
        tracking.tracked_accelerator(["wandb"], "/nonexistent", cpu=True)


def test_eval_headline_metrics_are_flat_numbers():
    report = {"problems_per_s": 12.5,
              "overall": {"accuracy": 0.5, "n": 10, "by_steps": {"2": {}}, "accuracy_ci": [0.2, 0.8]},
              "splits": {"test": {"accuracy": 0.5, "chain_valid": 0.4, "by_steps": {}}}}
    assert headline_metrics(report) == {"eval/problems_per_s": 12.5, "eval/overall/accuracy": 0.5,
                                        "eval/overall/n": 10, "eval/test/accuracy": 0.5, "eval/test/chain_valid": 0.4}


# --- eval progress ----------------------------------------------------------------------------
class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_in_a_log_prints_plain_lines_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()  # StringIO is not a terminal
    progress = Progress(100, stream=out, clock=clock)
    for _ in range(20):  # 5 problems a second
        clock.t += 1
        progress.update(5)
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0] == "eval: 10/100 problems (10%), 5.0 problems/s, ETA 00:18"
    assert lines[-1] == "eval: 100/100 problems (100%), 5.0 problems/s, ETA 00:00"


def test_progress_in_a_log_prints_at_least_once_a_minute():
    clock, out = Clock(), io.StringIO()
    progress = Progress(1000, unit="sample", stream=out, clock=clock)
    clock.t = 61
    progress.update(1)
    assert out.getvalue() == "eval: 1/1000 samples (0%), 0.0 samples/s, ETA 16:55:39\n"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_in_a_terminal_is_a_tqdm_bar_and_off_on_other_processes():
    out = Terminal()
    progress = Progress(50, stream=out)
    progress.update(50)
    progress.close()
    assert "50/50" in out.getvalue() and "problem/s" in out.getvalue() and "\r" in out.getvalue()
    quiet = io.StringIO()
    Progress(50, stream=quiet, enabled=False).update(50)
    assert quiet.getvalue() == ""


def test_every_stage_gets_the_mixed_precision_it_asks_for_as_in_a_process_of_its_own(tmp_path):
    """Accelerate keeps one AcceleratorState per process; the pipeline runs its stages in one. Each
    stage's Accelerator gets its own precision: fp32 (base), bf16 (train), then fp32 again (rl)."""
    assert tracking.tracked_accelerator([], str(tmp_path), cpu=True).mixed_precision == "no"
    assert tracking.tracked_accelerator([], str(tmp_path), cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
    assert tracking.tracked_accelerator([], str(tmp_path), cpu=True).mixed_precision == "no"


def test_the_pipeline_runs_base_in_fp32_then_train_in_bf16_in_one_process(tmp_path, monkeypatch):
    """`reasonlm pipeline` with a tiny base and train.mixed_precision bf16 stopped after the base stage
    (`AcceleratorState has already been initialized and cannot be changed`): base then train, one
    process, CPU bf16 autocast; train's Accelerator is bf16 and the adapter is written."""
    precisions = []
    made = tracking.tracked_accelerator

    def spy(*args, **kwargs):
        accelerator = made(*args, **kwargs)
        precisions.append(accelerator.mixed_precision)
        return accelerator
    monkeypatch.setattr(train, "tracked_accelerator", spy)
    monkeypatch.setattr(base, "tracked_accelerator", spy)
    recipe = {**TINY_RECIPE, "out_dir": str(tmp_path / "run"), "direct_baseline": False,
              "train": {**TINY_RECIPE["train"], "mixed_precision": "bf16"}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli.main(["pipeline", str(path)]) in (None, 0)
    assert precisions == ["no", "bf16"]  # base, then train
    assert (tmp_path / "run" / "train" / "adapter" / "adapter_config.json").is_file()
