"""Re-running `reasonlm pipeline` skips the stages whose settings (and inputs) did not change.

The fast tests drive pipeline.StageRecord with stand-in stages; the slow one runs a tiny recipe
end to end three times (a minute on 2 cores)."""
import json
import shutil

import pytest
import yaml

from reasonlm import cli
from reasonlm.pipeline import StageRecord, config_hash
from reasonlm.config import TrainConfig
from tests.helpers import TINY_RECIPE as TINY


def run_stages(out, settings, force=False):
    """Four stand-in stages in a chain a -> b -> c, and d reading a only; returns {stage: fresh}."""
    record, ran = StageRecord(str(out), force), {}

    def stage(name, inputs):
        def fn(fresh):
            ran[name] = fresh
            (out / name).write_text(settings[name])
        record.stage(name, settings[name], inputs, str(out / name), fn)

    stage("a", [])
    stage("b", ["a"])
    stage("c", ["b"])
    stage("d", ["a"])
    return ran


def test_a_changed_stage_reruns_from_scratch_with_everything_that_reads_it(tmp_path, capsys):
    settings = {"a": "1", "b": "1", "c": "1", "d": "1"}
    assert run_stages(tmp_path, settings) == {"a": False, "b": False, "c": False, "d": False}
    assert run_stages(tmp_path, settings) == {}
    assert "== c: up to date, skipped" in capsys.readouterr().out
    assert run_stages(tmp_path, {**settings, "b": "2"}) == {"b": True, "c": True}  # d does not read b
    assert run_stages(tmp_path, {**settings, "b": "2", "a": "2"}) == {"a": True, "b": True, "c": True, "d": True}
    assert run_stages(tmp_path, {**settings, "b": "2", "a": "2"}, force=True) == dict.fromkeys("abcd", True)
    (tmp_path / "c").unlink()  # an output deleted by hand is made again (same settings: may resume)
    assert run_stages(tmp_path, {**settings, "b": "2", "a": "2"}) == {"c": False}
    assert json.loads((tmp_path / "stages.json").read_text())["c"]["finished"] is True


def test_an_interrupted_stage_resumes_when_its_settings_are_the_same(tmp_path):
    settings = dict.fromkeys("abcd", "1")
    run_stages(tmp_path, settings)
    record = StageRecord(str(tmp_path), False)

    def interrupted(fresh):
        assert fresh  # new settings: start over
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record.stage("b", "2", ["a"], str(tmp_path / "b"), interrupted)
    # b continues its interrupted run; c was made from the old b, so it starts over
    assert run_stages(tmp_path, {**settings, "b": "2"}) == {"b": False, "c": True}


def test_settings_that_never_change_an_output_rerun_nothing():
    cfg = TrainConfig()
    assert config_hash(cfg) == config_hash(TrainConfig(report_to=["tensorboard"], log_every=1, resume="never"))
    assert config_hash(cfg) != config_hash(TrainConfig(lr=1e-4))


def test_paths_inside_the_run_directory_hash_relative_to_it():
    """A moved or copied run directory is up to date; a model outside it still counts by its path."""
    assert config_hash(TrainConfig(model="/a/run/base"), "/a/run") == config_hash(TrainConfig(model="/b/copy/base"), "/b/copy")
    assert config_hash(TrainConfig(model="/a/run/base"), "/a/run") != config_hash(TrainConfig(model="/a/run/base"), "/a/r")
    assert config_hash(TrainConfig(model="/a/run-2/base"), "/a/run") != config_hash(TrainConfig(model="/b/run-2/base"), "/b/run")



@pytest.mark.slow
def test_second_pipeline_run_skips_everything_and_a_new_lr_reruns_train_and_eval_only(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "run")}))
    stages = ["data", "base", "train", "eval", "train_direct", "eval_direct"]

    def pipeline(*overrides):
        cli.main(["pipeline", str(recipe), *overrides])
        out = capsys.readouterr().out
        return [s for s in stages if f"== {s} done in" in out], [s for s in stages if f"== {s}: up to date" in out]

    assert pipeline() == (stages, [])
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert set(report["timing_s"]) == set(stages) and "direct" in report
    assert (tmp_path / "run" / "base-run" / "loss.png").exists() and (tmp_path / "run" / "train" / "loss.png").exists()
    assert pipeline() == ([], stages)
    shutil.copytree(tmp_path / "run", tmp_path / "copy")  # a copied run is up to date where it lies
    assert pipeline(f"out_dir={tmp_path / 'copy'}") == ([], stages)
    assert pipeline("train.lr=1e-3") == (["train", "eval", "train_direct", "eval_direct"], ["data", "base"])
    assert yaml.safe_load((tmp_path / "run" / "train" / "config.yaml").read_text())["lr"] == 1e-3
    # trained again from scratch: metrics.jsonl holds the new run's last step (log_every 20) once, not twice
    metrics = (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == [2]
