from reasonlm.evaluate.metrics import summarize
from reasonlm.evaluate.report import markdown
from tests.eval_helpers import sample


def test_summary_counts_every_metric_per_steps_and_family():
    samples = [sample("a", True), sample("b", True, first_bad=1, steps=(1, 2)), sample("c", False, n_steps=3,
               family="word_problems", first_bad=3, steps=(2, 3)), sample("d", False, extraction_failed=True, steps=(0, 0))]
    m = summarize(samples)
    assert m["n"] == 4 and m["accuracy"] == 0.5 and len(m["accuracy_ci"]) == 2
    assert m["right_answer_wrong_chain_count"] == 1 and m["right_answer_wrong_chain"] == 0.25
    assert m["extraction_failures"] == 1 and m["extraction_failed"] == 0.25
    assert m["step_accuracy"] == round(5 / 7, 4) and m["steps_checked"] == 7
    assert m["first_bad_step"]["hist"] == {"1": 1, "3": 1} and m["first_bad_step"]["mean"] == 2.0
    assert m["first_bad_step"]["relative_mean"] == round((1 / 2 + 3 / 3) / 2, 4)
    assert m["by_steps"]["2"]["n"] == 3 and m["by_steps"]["3"]["n"] == 1
    assert m["by_family"]["word_problems"]["accuracy"] == 0.0 and m["by_family"]["arithmetic"]["n"] == 3
    for key in ("accuracy", "flexible_accuracy", "extraction_failed", "chain_valid", "right_answer_wrong_chain",
                "step_accuracy"):
        lo, hi = m[f"{key}_ci"]
        assert lo <= m[key] <= hi


def test_pass_at_k_and_maj_at_k_from_samples():
    # problem a: 1 of 4 samples right; problem b: 3 of 4 right, with '4.0' and '$4' voting together
    samples = [sample("a", c, k=i) for i, c in enumerate([True, False, False, False])]
    samples += [sample("b", True, answer=a, k=i) for i, a in enumerate(["4", "4.0", "$4"])] + [sample("b", False, k=3)]
    m = summarize(samples, ks=[1, 2, 4])
    assert m["n"] == 2 and m["n_samples"] == 8
    assert m["accuracy"] == 0.5 and m["pass@1"] == 0.5
    assert m["pass@2"] == round((0.5 + 1.0) / 2, 4)  # a: 1 - C(3,2)/C(4,2) = 0.5; b: 1
    assert m["pass@4"] == 1.0
    assert m["maj@4"] == 0.5  # a's vote is '0' (wrong), b's is '4'


def test_no_final_answer_is_a_rate_not_a_crash():
    samples = [sample(str(i), False, extraction_failed=True, steps=(0, 0)) for i in range(5)]
    m = summarize(samples, ks=[])
    assert m["extraction_failed"] == 1.0 and m["accuracy"] == 0.0 and m["step_accuracy"] is None
    assert m["first_bad_step"]["n"] == 0 and m["first_bad_step"]["mean"] is None
    assert "accuracy" in markdown({"splits": {"s": m}, "overall": m})
