"""`reasonlm config`, `--version` and each subcommand's --help."""
import glob
import os

import pytest
import yaml

import reasonlm
from reasonlm import cli
from reasonlm.config import ConfigError, field_docs, load_recipe, render_recipe, TrainConfig
from tests.helpers import ROOT

RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.yaml")))


@pytest.mark.parametrize("recipe", RECIPES, ids=os.path.basename)
def test_config_prints_yaml_that_loads_back_to_the_same_recipe(recipe, tmp_path, capsys):
    overrides = ["train.lr=1e-4", "eval.system=no", "data.tokenizer=", "train.report_to=[tensorboard]"]
    cli.main(["config", recipe, *overrides])
    text = capsys.readouterr().out
    yaml.safe_load(text)  # plain YAML
    (tmp_path / "resolved.yaml").write_text(text)
    resolved = load_recipe(str(tmp_path / "resolved.yaml"))
    assert resolved == load_recipe(recipe, overrides)
    assert resolved.train.lr == 1e-4 and resolved.eval.system == "no" and resolved.train.report_to == ["tensorboard"]


def test_config_comments_every_field_with_its_docstring(capsys):
    cli.main(["config", RECIPES[0]])
    text = capsys.readouterr().out
    docs = field_docs(TrainConfig)
    assert len(docs) == len(TrainConfig.__dataclass_fields__)
    lines = text.splitlines()
    at = lines.index("  lr: " + str(load_recipe(RECIPES[0]).train.lr))
    assert lines[at - 1] == "  # " + docs["lr"]
    assert "  # Experiment trackers that also get the logged metrics, through Accelerate: any of tensorboard" in lines


def test_default_recipe_renders_too(tmp_path):
    (tmp_path / "r.yaml").write_text(render_recipe(load_recipe(None)))
    assert load_recipe(str(tmp_path / "r.yaml")) == load_recipe(None)


def test_the_old_tensorboard_switch_says_what_replaced_it(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.tensorboard' was replaced: write train.report_to: \[tensorboard\]"):
        load_recipe(None, ["train.tensorboard=true"])


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"reasonlm {reasonlm.__version__}\n"


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_subcommand_help_names_its_recipe_sections_and_an_example(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert "recipe sections:" in out and f"example: reasonlm {command} " in out
