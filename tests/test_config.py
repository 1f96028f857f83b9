"""Recipes load strictly: unknown keys and wrong types are one-line errors; every shipped YAML loads."""
import glob
import os

import pytest

from reasonlm.config import ConfigError, Recipe, load_recipe
from tests.helpers import ROOT


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml"))))
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    with open(path) as f:
        first = f.readline()
    assert first.startswith("# reasonlm ") or first.startswith("# accelerate launch"), "recipes open with their command"


def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(str(p))
    msg = str(e.value)
    assert "train.learning_rate" in msg and "lr" in msg and "\n" not in msg


def test_unknown_section(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_recipe(str(p))


def test_wrong_type(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  steps: many\n")
    with pytest.raises(ConfigError, match="train.steps: expected int"):
        load_recipe(str(p))


def test_dotted_overrides_are_typed():
    r = load_recipe(None, ["train.lr=1e-3", "out_dir=/tmp/x", "data.train_steps=[1, 4]", "train.use_dora=true"])
    assert r.train.lr == 1e-3 and r.out_dir == "/tmp/x" and r.data.train_steps == [1, 4] and r.train.use_dora is True


def test_bad_override():
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(None, ["train.lr"])
    with pytest.raises(ConfigError, match="unknown key 'train.nope'"):
        load_recipe(None, ["train.nope=1"])


def test_missing_recipe():
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe("/nonexistent.yaml")


def test_bare_no_is_text_for_string_settings():
    """YAML 1.1 reads `mixed_precision: no` as False; a text setting gets 'no' back."""
    assert load_recipe(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_base_model_is_decided_in_one_place_and_run_paths_know_the_layout(tmp_path):
    """config.base_model: a stage's own model setting, else base.model when it names a pretrained
    model, else the tiny base the base stage writes; a Hub base is never <out_dir>/base."""
    from reasonlm.config import DIRECT_RUN, RunPaths, base_model
    out = str(tmp_path)
    tiny, hub = load_recipe(None, [f"out_dir={out}"]), load_recipe(None, [f"out_dir={out}", "base.model=org/model"])
    assert base_model(tiny) == os.path.join(out, "base") and base_model(hub) == "org/model"
    assert base_model(hub, "other/model") == base_model(tiny, "other/model") == "other/model"
    paths = RunPaths(out)
    assert paths.weights("train") == paths.adapter("train") == os.path.join(out, "train", "adapter")
    assert paths.weights(DIRECT_RUN, full_finetune=True) == os.path.join(out, "train-direct", "model")
    assert [paths.eval_of(r) for r in ("train", DIRECT_RUN, "rl", "base-run")] == [
        os.path.join(out, "eval"), os.path.join(out, "eval-direct"), os.path.join(out, "eval-rl"), None]
    assert paths.report("eval-rl") == os.path.join(out, "eval-rl", "report.json")
    assert paths.stages == os.path.join(out, "stages.json")
