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


def test_ladders_pool_a_labels_folders_per_length_and_draw_them(tmp_path, capsys):
    for name, right in (("s0", 2), ("s1", 0), ("sft", 0)):  # 2 problems of 9 and of 12 steps each
        (tmp_path / name).mkdir()
        rows = [{"n_steps": steps, "correct": i < right} for steps in (9, 12) for i in range(2)]
        (tmp_path / name / "samples.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    png = tmp_path / "ladder.png"
    bench_rl.main(["ladders", "--run", f"SFT={tmp_path / 'sft'}", "--run", f"RL={tmp_path / 's0'},{tmp_path / 's1'}",
                   "--trained", "6", "--plot", str(png)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | 9 | 12 |"
    assert lines[2] == "| SFT | 0% | 0% |"
    assert lines[3] == "| RL | 50% | 50% |"  # 2 of 2 and 0 of 2, pooled
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_breaks_counts_wrong_answers_by_their_first_wrong_step(tmp_path, capsys):
    (tmp_path / "s0").mkdir()
    rows = [{"n_steps": 12, "correct": True, "steps_total": 12, "first_bad_step": None},
            {"n_steps": 12, "correct": False, "steps_total": 9, "first_bad_step": None, "truncated": False},
            {"n_steps": 12, "correct": False, "steps_total": 12, "first_bad_step": 1, "truncated": False},
            {"n_steps": 12, "correct": False, "steps_total": 5, "first_bad_step": 1, "truncated": True},
            {"n_steps": 13, "correct": False, "steps_total": 13, "first_bad_step": 4},
            {"n_steps": 2, "correct": False, "steps_total": 2, "first_bad_step": 2}]
    (tmp_path / "s0" / "samples.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    bench_rl.main(["breaks", str(tmp_path / "s0"), "--steps", "9-13"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["| 12 | 4 | 3 | 2 | 1 | none: 1, 1: 2 |", "| 13 | 1 | 1 | 0 | 0 | 4: 1 |"]
