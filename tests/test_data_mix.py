"""data/mix.py: the entries of data.tasks and the data settings, checked before anything is made."""
import glob
import os

import pytest

from reasonlm import data
from reasonlm.config import load_recipe
from reasonlm.data.mix import mix_entries
from reasonlm.tasks import known_tasks
from tests.data_helpers import REPO, build


def test_unknown_family_lists_the_known_ones(tmp_path):
    with pytest.raises(data.DataError) as e:
        build(tmp_path, tasks=[{"name": "arithmatic"}])
    msg = str(e.value)
    assert "arithmatic" in msg and all(name in msg for name in known_tasks()) and "\n" not in msg


@pytest.mark.parametrize("spec,match", [
    ({"name": "arithmetic", "count": 5}, "'count' is for importers"),
    ({"name": "gsm8k", "args": {"path": "x.jsonl"}, "weight": 2}, "'weight' is for generated"),
    ({"name": "gsm8k", "args": {"path": "x.jsonl"}, "into": "test"}, "into must be 'train' or a new eval split"),
    ({"name": "arithmetic", "steps": [3, 1]}, "steps must be"),
    ({"name": "arithmetic", "stepz": [1, 3]}, "unknown key"),
    ({"name": "arithmetic", "splits": ["bass"]}, "splits must be a non-empty list"),
])
def test_bad_source_specs(tmp_path, spec, match):
    with pytest.raises(data.DataError, match=match):
        build(tmp_path, tasks=[spec])


@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "data" / "*.yaml"))))
def test_data_recipes_load_and_name_their_command(path):
    with open(path) as f:
        assert f.readline().strip() == f"# reasonlm data data/{os.path.basename(path)}"
    recipe = load_recipe(path)
    mix_entries(recipe.data)  # every family and its knobs are valid
