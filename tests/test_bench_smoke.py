"""Smoke tests of eval/bench_train.py on a 2-layer, 32-wide random model: it runs end to end and prints
its table. Numbers from these settings mean nothing; the benchmark itself is run by hand."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

TINY = ["--steps", "2", "--rows", "4", "--hidden", "32", "--layers", "2", "--heads", "4", "--threads", "1",
        "--val-n", "10"]
# | side | steps | non-padding tokens/s | peak RSS (MB) | final val loss | wall s | ...
ROW = r"^\| {side} \| 2 \| ([\d,]+) \| ([\d,]+) \| (\d+\.\d+) \| (\d+\.\d+) \|"


def run_bench(*args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": ROOT}
    p = subprocess.run([sys.executable, os.path.join(ROOT, "eval", "bench_train.py"), *TINY, *args],
                       capture_output=True, text=True, env=env, timeout=timeout)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p.stdout


def number(text):
    return float(text.replace(",", ""))


def test_reasonlm_side_prints_a_row_with_tokens_per_s(tmp_path):
    out = run_bench("--skip-trl", "--mode", "lora", "--out", str(tmp_path))
    assert out.startswith("command: ") and "bench_train.py" in out.splitlines()[0]
    m = re.search(ROW.format(side="reasonlm-lora"), out, re.M)
    assert m, out
    tokens_per_s, rss, val_loss, wall = map(number, m.groups())
    assert tokens_per_s > 0 and rss > 0 and 0 < val_loss < 20 and wall > 0
    assert re.search(r"MFU reasonlm-lora: .* = \d+\.\d+%", out), out


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed (pip install trl)")
def test_trl_side_runs_two_steps_on_the_same_tokens(tmp_path):
    out = run_bench("--mode", "lora", "--trl-variants", "default", "--out", str(tmp_path))
    m = re.search(ROW.format(side="trl-lora"), out, re.M)
    assert m, out
    assert number(m.group(1)) > 0
    assert "same tokens and loss mask as reasonlm: yes" in out, out
    assert re.search(r"ratio reasonlm-lora / trl-lora: \d+\.\d+x", out), out
