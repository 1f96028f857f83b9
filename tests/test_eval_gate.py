import json
import os

import pytest

from reasonlm import cli, evaluate
from tests.eval_helpers import fake_report, toy_dir, write_suite  # noqa: F401 (fixtures)


def test_compare_gives_the_paired_difference_and_tests(tmp_path, capsys):
    a, _ = fake_report(tmp_path, "a", [0] * 30 + [1] * 70)
    b, _ = fake_report(tmp_path, "b", [1] * 30 + [1] * 70)  # B fixes 30 problems, breaks none
    result = evaluate.compare(a, b)
    row = result["rows"][0]
    assert row["diff"] == pytest.approx(0.3) and row["lo"] > 0 and row["p_value"] < 0.01
    assert row["mcnemar_b01"] == 30 and row["mcnemar_b10"] == 0 and row["mcnemar_p"] < 1e-6
    cli.main(["eval", "compare", a, b])
    out = capsys.readouterr().out
    assert "+0.300" in out and "McNemar" in out
    assert evaluate.compare(a, b, metric="chain_valid")["rows"][0]["diff"] == pytest.approx(0.3)


def test_compare_refuses_reports_from_different_datasets(tmp_path, capsys):
    a, _ = fake_report(tmp_path, "a", [1, 0, 1])
    b, _ = fake_report(tmp_path, "b", [1, 0, 1], fingerprint="0" * 16)
    c, _ = fake_report(tmp_path, "c", [1, 0, 1, 1], fingerprint=None)
    for other in (b, c):
        with pytest.raises(SystemExit) as e:
            cli.main(["eval", "compare", a, other])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "different problems" in err and "\n" not in err
    with pytest.raises(SystemExit):
        cli.main(["eval", "compare", a, str(tmp_path / "missing.json")])
    assert "report not found" in capsys.readouterr().err


def test_gate_passes_within_the_interval_and_fails_beyond_it(tmp_path):
    _, base = fake_report(tmp_path, "base", [1] * 80 + [0] * 20)
    _, same = fake_report(tmp_path, "same", [1] * 78 + [0] * 22)
    _, worse = fake_report(tmp_path, "worse", [1] * 55 + [0] * 45)
    baseline = evaluate.make_baseline(base)
    assert evaluate.check_gate(same, baseline, ["accuracy"]) == []
    failures = evaluate.check_gate(worse, baseline, ["accuracy"])
    assert failures and any("overall.accuracy" in f and "0.2500 below the baseline 0.8000" in f for f in failures)
    # a lower-is-better metric fails when it rises
    worse["overall"]["extraction_failed"], worse["overall"]["extraction_failed_ci"] = 0.5, [0.4, 0.6]
    assert any("extraction_failed" in f and "above" in f for f in evaluate.check_gate(worse, baseline, ["extraction_failed"]))
    assert evaluate.check_gate(same, None, (), {"accuracy": 0.9})[0].startswith("overall.accuracy = 0.7800 is below")
    assert evaluate.check_gate(same, None, (), {"splits.test.accuracy": 0.5}) == []
    other = dict(same, dataset_fingerprint="0" * 16)
    with pytest.raises(evaluate.EvalError, match="other problems"):
        evaluate.check_gate(other, baseline, ["accuracy"])


def test_gate_exit_codes_from_the_command_line(toy_dir, tmp_path, capsys):
    path = write_suite(tmp_path / "s.yaml")
    out = str(tmp_path / "run")
    cli.main(["eval", path, "--model", toy_dir, "--out", out])
    report = json.load(open(os.path.join(out, "report.json")))
    cli.main(["eval", "baseline", os.path.join(out, "report.json"), str(tmp_path / "b.json")])
    cli.main(["eval", path, "--model", toy_dir, "--out", out, "--baseline", str(tmp_path / "b.json")])
    assert "gate: passed" in capsys.readouterr().out
    better = json.load(open(tmp_path / "b.json"))  # a baseline the toy model cannot meet
    better["metrics"]["overall.extraction_failed"] = [0.0, 0.0, 0.0]
    (tmp_path / "hi.json").write_text(json.dumps(better))
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", path, "--model", toy_dir, "--out", out, "--baseline", str(tmp_path / "hi.json")])
    assert e.value.code == 1
    assert "gate: overall.extraction_failed = 1.0000 is 1.0000 above the baseline" in capsys.readouterr().err
    better["dataset_fingerprint"] = "0" * 16
    (tmp_path / "other.json").write_text(json.dumps(better))
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", path, "--model", toy_dir, "--out", out, "--baseline", str(tmp_path / "other.json")])
    assert e.value.code == 2 and "other problems" in capsys.readouterr().err
    assert report["overall"]["n"] == 12
