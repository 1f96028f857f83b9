"""eval/bench_rl.py pool: pipeline runs of several seeds pooled per bucket of lengths."""
import importlib.util
import json
import os

from tests.helpers import ROOT

spec = importlib.util.spec_from_file_location("bench_rl", os.path.join(ROOT, "eval", "bench_rl.py"))
bench_rl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_rl)


def test_pool_counts_every_seeds_samples_per_bucket(tmp_path, capsys):
    for seed, right in ((0, 3), (1, 1)):  # 4 held-out problems of 2 steps, 2 ladder problems of 9 steps each
        for folder, steps, n in (("eval-rl", 2, 4), ("eval-ladder-rl", 9, 2)):
            (tmp_path / f"s{seed}" / folder).mkdir(parents=True)
            rows = [{"n_steps": steps, "correct": i < right} for i in range(n)]
            (tmp_path / f"s{seed}" / folder / "samples.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    bench_rl.main(["pool", str(tmp_path / "s0"), str(tmp_path / "s1"), "--buckets", "2-6,9-10"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| held-out split | 2 | 50.0% (") and lines[2].endswith("| - |")  # 4 of 8
    assert lines[3].startswith("| ladder | 2 | - | 75.0% (")  # 2 + 1 of 4
