"""Task families from outside the package: task files (recipes, suites, --task-files) and the
`reasonlm.tasks` entry point group register through one loader; a broken plugin is one line."""
import os
import sys
import textwrap

import pytest

from reasonlm import cli, data, tasks
from reasonlm.config import DataConfig, Recipe, load_recipe, load_suite
from reasonlm.data.mix import DataError
from tests.helpers import plugin_registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLOCK = os.path.join(ROOT, "docs", "examples", "clock.py")
GOOD = '''
import random
from reasonlm.example import Example
from reasonlm.tasks.base import Check, Family, finish_check

class Doubling(Family):
    name = "{name}"
    version = 1
    license = "MIT"

    def generate(self, rng, n_steps):
        x, steps = rng.randint(1, 9), []
        for _ in range(n_steps):
            steps.append(f"{{x}}*2={{x * 2}}")
            x *= 2
        return Example(f"Double {{steps[0].split('*')[0]}} {{n_steps}} times", str(x), tuple(steps), n_steps, self.name)

    def check(self, example, steps, answer):
        gold = [s for s in example.steps] if {trusting} else ["nothing"] * len(steps)
        ok = [i < len(gold) and s == gold[i] for i, s in enumerate(steps)]
        return finish_check(answer == example.answer, ok, len(steps) == len(gold))
'''


@pytest.fixture(autouse=True)
def registry():
    with plugin_registry():
        yield


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_recipe_task_files_are_relative_to_the_recipe_and_loaded_only_when_named(tmp_path, capsys):
    (tmp_path / "plugins").mkdir()
    write(tmp_path / "plugins", "doubling.py", GOOD.format(name="doubling", trusting=True))
    recipe_path = write(tmp_path, "r.yaml", "task_files: [plugins/doubling.py]\ndata:\n  tasks: [{name: doubling}]\n")
    recipe = load_recipe(recipe_path)
    assert recipe.task_files == [str(tmp_path / "plugins" / "doubling.py")]
    assert "doubling" not in tasks.TASKS  # reading a recipe runs nothing
    assert tasks.load_plugins(recipe.task_files) == ["doubling"]
    assert f"tasks: loaded {tmp_path / 'plugins' / 'doubling.py'} (doubling)" in capsys.readouterr().err
    assert tasks.load_plugins(recipe.task_files) == ["doubling"]  # once per process
    assert capsys.readouterr().err == ""
    assert list(tasks.TASKS).index("doubling") < list(tasks.TASKS).index("word_problems")  # /verify's order
    suite = write(tmp_path, "s.yaml", "task_files: [plugins/doubling.py]\nsources: [{task: doubling}]\n")
    assert load_suite(suite).task_files == recipe.task_files


@pytest.mark.parametrize("body, missing", [
    ("class Bad(Family):\n    name = 'bad'\n    version = 1\n    license = 'MIT'\n    def generate(self, rng, n): ...\n",
     "missing method check()"),
    ("class Bad(Family):\n    version = 1\n    license = 'MIT'\n    def generate(self, rng, n): ...\n"
     "    def check(self, e, s, a): ...\n", "missing class attribute name (str)"),
    ("class Bad(Importer):\n    name = 'bad'\n    license = 'MIT'\n    def __init__(self, path): ...\n"
     "    def check(self, e, s, a): ...\n", "method load(); defaults for the constructor's knobs path"),
])
def test_a_class_breaking_the_protocol_is_one_line_naming_file_class_and_what_is_missing(tmp_path, body, missing):
    path = write(tmp_path, "bad.py", "from reasonlm.tasks.base import Family, Importer\n" + body)
    with pytest.raises(tasks.PluginError) as e:
        tasks.load_plugins([path])
    msg = str(e.value)
    assert path in msg and "class Bad" in msg and missing in msg and "\n" not in msg
    assert "bad" not in tasks.TASKS


@pytest.mark.parametrize("text, says", [
    ("import nonexistent_module_xyz\n", "failed to import: ModuleNotFoundError"),
    ("def broken(:\n", "failed to import: SyntaxError"),
    ("x = 1\n", "defines no task family"),
])
def test_a_task_file_that_cannot_be_used_is_one_line(tmp_path, text, says):
    path = write(tmp_path, "t.py", text)
    with pytest.raises(tasks.PluginError, match=says) as e:
        tasks.load_plugins([path])
    assert "\n" not in str(e.value) and path in str(e.value)
    with pytest.raises(tasks.PluginError, match="task file not found"):
        tasks.load_plugins([str(tmp_path / "missing.py")])


def test_a_name_taken_by_a_built_in_family_is_refused(tmp_path):
    path = write(tmp_path, "clash.py", GOOD.format(name="arithmetic", trusting=True))
    with pytest.raises(tasks.PluginError, match=r"family name 'arithmetic' is taken \(built-in\)"):
        tasks.load_plugins([path])


def test_a_checker_that_rejects_its_own_gold_stops_the_data_stage(tmp_path):
    tasks.load_plugins([write(tmp_path, "liar.py", GOOD.format(name="liar", trusting=False))])
    cfg = DataConfig(tasks=[{"name": "liar"}], n_train=10, n_validation=2, n_test_per_steps=1, n_base=2, workers=1)
    with pytest.raises(DataError, match=r"data.tasks\[0\] \(liar\): reward preflight: task liar scores a gold"):
        data.run(Recipe(out_dir=str(tmp_path / "out"), data=cfg))
    assert not os.path.exists(tmp_path / "out" / "data")


def test_spawned_data_workers_load_the_same_task_files(tmp_path):
    tasks.load_plugins([CLOCK])
    cfg = DataConfig(tasks=[{"name": "clock"}], n_train=30, n_validation=4, n_test_per_steps=1, n_base=10, workers=2)
    out = data.run(Recipe(out_dir=str(tmp_path / "out"), data=cfg))
    one = data.run(Recipe(out_dir=str(tmp_path / "one"), data=DataConfig(**{**cfg.__dict__, "workers": 1})))
    for split in ("train", "base"):
        with open(os.path.join(out, "jsonl", f"{split}.jsonl")) as a, open(os.path.join(one, "jsonl", f"{split}.jsonl")) as b:
            assert a.read() == b.read()


def test_installed_entry_points_register_too(tmp_path, monkeypatch, capsys):
    pkg = tmp_path / "site"
    (pkg / "my_clock_pkg").mkdir(parents=True)
    (pkg / "my_clock_pkg" / "__init__.py").write_text(open(CLOCK).read())
    info = pkg / "my_clock_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-clock-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[reasonlm.tasks]\nclock = my_clock_pkg:Clock\n")
    monkeypatch.syspath_prepend(str(pkg))
    tasks._INSTALLED.clear()
    assert "clock" in tasks.known_tasks()
    assert "clock from entry point clock = my_clock_pkg:Clock (my-clock-pkg 1.0)" in capsys.readouterr().err
    assert tasks.ORIGINS["clock"].startswith("entry point")
    monkeypatch.delitem(sys.modules, "my_clock_pkg")


def test_reasonlm_tasks_lists_every_family_with_its_origin_and_what_it_supports(capsys):
    cli.main(["tasks", "--task-files", CLOCK])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() [:2] == ["family", "from"]
    clock = next(line for line in out if line.startswith("clock "))
    assert CLOCK in clock and clock.split()[-3:] == ["generate", "yes", "yes"]
    records = next(line for line in out if line.startswith("records "))
    assert records.split()[1:] == ["built-in", "load", "no", "no"]
