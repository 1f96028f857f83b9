import glob
import os

import pytest

from reasonlm import cli
from reasonlm.config import EvalConfig, is_suite, load_suite
from reasonlm.sources import SOURCE_KINDS, SOURCE_OPTIONS
from tests.eval_helpers import write_suite
from tests.helpers import ROOT


SUITES = sorted(glob.glob(os.path.join(ROOT, "eval", "*.yaml")))


def test_suites_ship():
    names = {os.path.basename(p) for p in SUITES}
    assert {"in-distribution.yaml", "ood.yaml", "word-problems.yaml", "gsm8k-sample.yaml", "reasoning-gym.yaml"} <= names


@pytest.mark.parametrize("path", SUITES, ids=os.path.basename)
def test_every_shipped_suite_loads_and_opens_with_its_command(path):
    cfg = load_suite(path)
    assert isinstance(cfg, EvalConfig) and cfg.sources
    rel = os.path.relpath(path, ROOT)
    with open(path) as f:
        first = f.readline().strip()
    assert first.startswith(f"# reasonlm eval {rel}") or first.startswith("# accelerate launch"), first
    assert is_suite(path)
    for spec in cfg.sources:
        assert sum(k in spec for k in SOURCE_KINDS) == 1 and not set(spec) - SOURCE_OPTIONS - set(SOURCE_KINDS)


def test_recipes_are_not_suites():
    assert not is_suite(os.path.join(ROOT, "recipes", "tiny-cpu.yaml"))


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
