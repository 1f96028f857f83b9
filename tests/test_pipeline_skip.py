"""Re-running `reasonlm pipeline` skips the stages whose settings (and inputs) did not change.

The fast tests drive pipeline.StageRecord with stand-in stages; the slow one runs a tiny recipe
end to end three times (a minute on 2 cores)."""
import json
import shutil

import pytest
import yaml

from reasonlm import cli
from reasonlm.config import config_hash
from reasonlm.pipeline import StageRecord
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


# --- issue 30, fault 6: stage skipping checks what it trusts -------------------------------------
@pytest.mark.parametrize("content,why", [
    (b"[]", "not a record of stages"), (b"null", "not a record of stages"),
    (b'{"data": "x"}', "not a record of stages"), (b'{"data": {"hash": 3, "finished": true}}', "not a record of stages"),
    (b"{not json", "not JSON"), (b'{"data": "caf\xe9"}', "not JSON"),
])
def test_a_stages_json_that_is_not_a_stage_record_is_one_line_naming_it(tmp_path, capsys, content, why):
    """A stages.json the pipeline cannot read as its own stops the run in one line naming the file,
    before anything is written (it may be someone's file; guessing which stages are done could skip
    one that is not): move it away and every stage reruns."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "stages.json").write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{out / 'stages.json'}: {why}"):
        StageRecord(str(out), False)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "out_dir": str(out)}))
    with pytest.raises(SystemExit) as e:
        cli.main(["pipeline", str(recipe)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {out / 'stages.json'}: {why}") and err.count("\n") == 1, err
    assert sorted(p.name for p in out.iterdir()) == ["stages.json"]
    assert (out / "stages.json").read_bytes() == content


def test_a_stage_whose_output_is_not_whole_reruns_with_every_stage_after_it(tmp_path, capsys):
    """A base folder without model.safetensors (or without its tokenizer), an adapter without its
    weights, a dataset without dataset_dict.json: the stage is not done, whatever stages.json says;
    it runs again, and so does every stage that reads it (from scratch: its input was made again)."""
    files = {"data": ["dataset_dict.json", "stats.json"], "base": ["config.json", "model.safetensors",
                                                                   "tokenizer_config.json", "tokenizer.json"],
             "train": ["adapter_config.json", "adapter_model.safetensors"]}

    def run_all():
        record, ran = StageRecord(str(tmp_path), False), {}

        def stage(name, inputs):
            def fn(fresh):
                ran[name] = fresh
                (tmp_path / name).mkdir(exist_ok=True)
                for f in files[name]:
                    (tmp_path / name / f).write_text("{}")
            record.stage(name, "1", inputs, str(tmp_path / name), fn)

        stage("data", [])
        stage("base", ["data"])
        stage("train", ["data", "base"])
        return ran

    assert run_all() == {"data": False, "base": False, "train": False}
    assert run_all() == {}
    for name, missing, rerun in [("base", "model.safetensors", {"base": False, "train": True}),
                                 ("base", "tokenizer.json", {"base": False, "train": True}),
                                 ("train", "adapter_model.safetensors", {"train": False}),
                                 ("data", "dataset_dict.json", {"data": False, "base": True, "train": True})]:
        (tmp_path / name / missing).unlink()
        capsys.readouterr()
        assert run_all() == rerun, missing
        assert f"== {name}: {tmp_path / name} is missing or incomplete; running it again" in capsys.readouterr().out
        assert run_all() == {}
