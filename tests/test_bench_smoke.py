"""Smoke tests of the benchmark scripts: every `python eval/bench_*.py ...` command written in
docs/benchmarks.md runs at HEAD, with its size flags shrunk (SHRINK) and its run folder a tiny
pipeline run made here; bench_train.py's table is read too (both sides' rows, MFU, TRL on the same
tokens). Numbers from these settings mean nothing; the benchmarks themselves are run by hand."""
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from reasonlm import cli
from tests.helpers import ROOT, TINY_RECIPE

pytestmark = pytest.mark.slow

# bench_train.py's table: | side | steps | non-padding tokens/s | peak RSS (MB) | final val loss | wall s | ...
ROW = r"^\| {side} \| 2 \| ([\d,]+) \| ([\d,]+) \| (\d+\.\d+) \| (\d+\.\d+) \|"


def number(text):
    return float(text.replace(",", ""))


def check_bench_train(argv: list[str], out: str):
    """The rows of each side the command runs (2 steps), reasonlm's MFU, and TRL's side on the same tokens."""
    assert out.startswith("command: ") and "bench_train.py" in out.splitlines()[0]
    mode = argv[argv.index("--mode") + 1]
    m = re.search(ROW.format(side=f"reasonlm-{mode}"), out, re.M)
    assert m, out
    tokens_per_s, rss, val_loss, wall = map(number, m.groups())
    assert tokens_per_s > 0 and rss > 0 and 0 < val_loss < 20 and wall > 0
    assert re.search(rf"MFU reasonlm-{mode}: .* = \d+\.\d+%", out), out
    if "--skip-trl" not in argv:
        m = re.search(ROW.format(side=f"trl-{mode}"), out, re.M)
        assert m and number(m.group(1)) > 0, out
        assert "same tokens and loss mask as reasonlm: yes" in out, out
        assert re.search(rf"ratio reasonlm-{mode} / trl-{mode}: \d+\.\d+x", out), out


# --- every command of docs/benchmarks.md ---------------------------------------------------------
def documented_commands() -> list[list[str]]:
    """Each `python eval/bench_*.py ...` of docs/benchmarks.md (inline or in a code block, backslash
    continuations joined, a trailing `# comment` dropped), as argv after `python`, once each."""
    text = open(os.path.join(ROOT, "docs", "benchmarks.md")).read().replace("\\\n", " ")
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    spans = re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
    found = []
    for line in [line for block in blocks for line in block.splitlines()] + [" ".join(s.split()) for s in spans]:
        m = re.search(r"python (eval/bench_\w+\.py.*)", line.split(" #")[0])
        if m and shlex.split(m.group(1)) not in found:
            found.append(shlex.split(m.group(1)))
    return found


# Per script: flag -> the tiny value the smoke run uses instead of the documented one (a list for a
# flag of several values; a flag not documented is added). A benchmark whose script is not here
# fails the test: add its tiny size.
SHRINK = {
    "bench_generate.py": {"--n": "4", "--repeat": "1", "--batch-size": "4", "--threads": "1"},
    "bench_scale.py": {"--seq": "32", "--steps": "1", "--warmup": "0"},
    "bench_data.py": {"": "300", "--workers": "1"},  # "": the positional count of problems
    "bench_train.py": {"--steps": "2", "--rows": "4", "--threads": "1", "--val-n": "10", "--hidden": "32",
                       "--layers": "2", "--heads": "4", "--jitter": "2"},
    "bench_rl.py": {"--rounds": "1", "--threads": "1", "--held-out": "2", "rl.prompts_per_round": "2",
                    "rl.mini_batch_size": "4"},
    "bench_onnx.py": {"--n": "4", "--threads": "1"},
    # every --adapter becomes the SFT one (the tiny run has no rl stage): one adapter, one curve per method
    "bench_search.py": {"--adapter": "SFT=out/tiny-cpu/train/adapter", "--steps": ["2", "3"], "--per-steps": "2",
                        "--methods": "greedy,majority@4,retry r2,beam w2e2", "--batch-size": "8", "--threads": "1"},
    "bench_serve.py": {"--clients": "2", "--seconds": "1", "--max-tokens": "8", "--max-batch": "2",
                       "--eval-batch": "4"},
}
# what each script prints when it ran to the end
PRINTS = {"bench_generate.py": "| method |", "bench_scale.py": "|", "bench_data.py": "| examples |",
          "bench_train.py": "| side |", "bench_rl.py": "| trainer |", "bench_onnx.py": "| runtime |",
          "bench_search.py": "| SFT | beam w2e2 |", "bench_serve.py": "| serve, 2 clients"}


def shrink(argv: list[str], run: str, recipe: str, scratch: str) -> list[str]:
    """The documented argv with SHRINK's sizes, the default run's folders (out/tiny-cpu, or RUN as
    the doc writes any run) replaced by `run` and the default recipe by `recipe`, and the scratch
    folders of bench_rl/bench_onnx under `scratch`."""
    script, args = os.path.basename(argv[0]), argv[1:]
    sizes = {flag: value if isinstance(value, list) else [value] for flag, value in SHRINK[script].items()}

    def local(a: str) -> str:
        return a.replace("recipes/tiny-cpu.yaml", recipe).replace("out/tiny-cpu", run).replace("RUN/", run + "/")

    out, i, seen = [os.path.join(ROOT, argv[0])], 0, set()
    while i < len(args):
        a = args[i]
        key, eq, _ = a.partition("=")
        if a in sizes and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out += [a, *map(local, sizes[a])]
            seen.add(a)
            i += 1 + len(sizes[a])
            continue
        if eq and key in sizes:  # an rl.* override
            out.append(f"{key}={sizes[key][0]}")
        elif "" in sizes and a.isdigit():  # the positional size
            out += sizes[""]
        else:
            out.append(local(a))
        i += 1
    for flag, value in sizes.items():
        if flag.startswith("--") and flag not in seen:
            out += [flag, *map(local, value)]
    if script in ("bench_rl.py", "bench_onnx.py"):  # their scratch folders default to /tmp and ./out
        out += ["--out", scratch]
    if script == "bench_onnx.py" and "--base" not in out:  # its defaults: the default run's (out/tiny-cpu)
        out += ["--base", f"{run}/base", "--adapter", f"{run}/train/adapter", "--data", f"{run}/data"]
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """data, base and SFT of a tiny recipe whose rl: section is the default recipe's at a tiny size
    (expert iteration with replay_sft, as recipes/tiny-cpu.yaml has it)."""
    root = tmp_path_factory.mktemp("bench")
    with open(os.path.join(ROOT, "recipes", "tiny-cpu.yaml")) as f:
        rl = yaml.safe_load(f)["rl"]
    rl.update(n_steps=[3, 4], rounds=1, prompts_per_round=2, num_generations=2, max_completion_length=24,
              mini_batch_size=4, processes=1, replay_sft=2)
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "out_dir": str(root / "run"), "rl": rl}))
    for stage in ("data", "base", "train"):
        cli.main([stage, str(recipe)])
    return str(root / "run"), str(recipe)


@pytest.mark.parametrize("argv", documented_commands(), ids=lambda argv: " ".join(argv)[:80])
def test_documented_benchmark_command_runs(argv, tiny_run, tmp_path):
    script = os.path.basename(argv[0])
    assert script in SHRINK, f"docs/benchmarks.md runs {script}: give it a tiny size in SHRINK"
    run, recipe = tiny_run
    cmd = [sys.executable, *shrink(argv, run, recipe, str(tmp_path / "scratch"))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": ROOT}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)
    assert p.returncode == 0, " ".join(cmd) + "\n" + p.stdout[-2000:] + p.stderr[-3000:]
    assert PRINTS[script] in p.stdout, p.stdout[-2000:]
    if script == "bench_train.py":
        check_bench_train(argv, p.stdout)


def test_every_documented_script_has_a_smoke_size():
    scripts = {os.path.basename(argv[0]) for argv in documented_commands()}
    assert scripts == set(SHRINK), scripts  # a new benchmark in the doc gets a tiny size; a gone one leaves
