"""Tests for reasonlm/stats.py: each estimator against a brute-force or textbook value."""
from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasonlm import stats
from reasonlm.plots import plot_accuracy_by_steps, plot_training_curves
from reasonlm.stats import (bootstrap_ci, maj_at_k, majority_vote, mcnemar, paired_bootstrap, pass_at_k,
                            wilson_interval)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def num_key(s):
    """The kind of key the evaluator passes: '12', '12.0' and '12.' are one answer."""
    try:
        return Fraction(s.rstrip("."))
    except ValueError:
        return None


# --- bootstrap_ci ----------------------------------------------------------------------------
def test_bootstrap_ci_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (30, 300, 3000):
        scores = (rng.random(n) < 0.6).astype(float)
        point, lo, hi = bootstrap_ci(scores)
        assert point == pytest.approx(scores.mean())
        assert lo < point < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # the width should shrink roughly like 1/sqrt(n): 10x the data, ~3.2x narrower
    assert 2.0 < widths[1] / widths[2] < 5.0


def test_bootstrap_ci_is_deterministic_per_seed():
    # continuous scores: with a few 0/1 scores different seeds can give the same quantiles
    scores = list(np.random.default_rng(0).random(25))
    assert bootstrap_ci(scores, seed=7) == bootstrap_ci(scores, seed=7)
    assert bootstrap_ci(scores, seed=7) != bootstrap_ci(scores, seed=8)


def test_bootstrap_ci_matches_single_index_draw():
    # The documented algorithm: one rng.integers(0, n, (B, n)) draw, percentile interval.
    scores = np.array([0.0, 1.0, 0.5, 1.0, 0.0, 0.25, 1.0])
    idx = np.random.default_rng(3).integers(0, len(scores), (500, len(scores)))
    boot = scores[idx].mean(axis=1)
    expected = (scores.mean(), *np.quantile(boot, [0.05, 0.95]))
    assert bootstrap_ci(scores, n_resamples=500, confidence=0.9, seed=3) == pytest.approx(expected)


def test_block_size_does_not_change_results(monkeypatch):
    scores = np.random.default_rng(0).random(37)
    whole = bootstrap_ci(scores, n_resamples=999, seed=5)
    paired_whole = paired_bootstrap(scores, scores[::-1], n_resamples=999, seed=5)
    monkeypatch.setattr(stats, "_MAX_BLOCK_CELLS", 37 * 10 + 3)  # blocks of 10 rows
    assert bootstrap_ci(scores, n_resamples=999, seed=5) == whole
    assert paired_bootstrap(scores, scores[::-1], n_resamples=999, seed=5) == paired_whole


def test_bootstrap_ci_edge_cases():
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([1.0]) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([0.3]) == pytest.approx((0.3, 0.3, 0.3))
    point, lo, hi = bootstrap_ci([0, 0, 1, 5, 9], stat=np.median)
    assert point == 1 and lo <= point <= hi
    with pytest.raises(ValueError):
        bootstrap_ci([1, 0], confidence=1.5)


# --- wilson_interval -------------------------------------------------------------------------
@pytest.mark.parametrize("k,n,lo,hi", [
    (0, 10, 0.0, 0.2775),     # textbook values (e.g. Newcombe 1998 / statsmodels 'wilson')
    (1, 10, 0.0179, 0.4042),
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
])
def test_wilson_interval_known_values(k, n, lo, hi):
    p, got_lo, got_hi = wilson_interval(k, n)
    assert p == k / n
    assert got_lo == pytest.approx(lo, abs=1e-4)
    assert got_hi == pytest.approx(hi, abs=1e-4)


def test_wilson_interval_edges():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(3, 10, 0.99)[2] > wilson_interval(3, 10, 0.90)[2]
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


# --- pass_at_k -------------------------------------------------------------------------------
def brute_pass_at_k(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@given(st.integers(1, 10).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_subset_enumeration(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n))))
def test_pass_at_1_is_fraction_correct(nc):
    n, c = nc
    assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    n, c, k = 1000, 5, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 6)  # k > n
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)  # c > n
    with pytest.raises(ValueError):
        pass_at_k(5, 2, 0)


# --- majority_vote ---------------------------------------------------------------------------
def test_majority_vote_basics():
    assert majority_vote(["3", None, "4", "4", None, None]) == ("4", 2)  # None does not vote
    assert majority_vote(["5", "7", "7", "5"]) == ("5", 2)  # tie -> earliest first occurrence
    assert majority_vote(["7", "5", "5", "7"]) == ("7", 2)
    assert majority_vote([None, None]) == (None, 0)
    assert majority_vote([]) == (None, 0)


def test_majority_vote_key_merges_equivalent_answers():
    answers = ["3", "12.0", "3", "12", "12."]
    assert majority_vote(answers) == ("3", 2)  # raw strings: '3' wins
    assert majority_vote(answers, key=num_key) == ("12.0", 3)  # first raw form of the bucket
    assert majority_vote(["x", "y", "2"], key=num_key) == ("2", 1)  # key None = failure


# --- maj_at_k --------------------------------------------------------------------------------
def brute_maj_at_k(samples, k, correct, key=None):
    scores = []
    for subset in itertools.combinations(samples, k):
        answer, _ = majority_vote(list(subset), key=key)
        scores.append(0.0 if answer is None else float(correct(answer)))
    return sum(scores) / len(scores)


answer_lists = st.lists(st.sampled_from(["12", "12.0", "7", "3", "x", None]), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(answer_lists.flatmap(lambda s: st.tuples(st.just(s), st.integers(1, len(s)))),
       st.booleans())
def test_maj_at_k_matches_enumeration_of_all_subsets(samples_k, use_key):
    samples, k = samples_k
    key = num_key if use_key else None

    def correct(a):
        return num_key(a) == 12

    got = maj_at_k(samples, k, correct, key=key, n_resamples=10**6)  # forces exact enumeration
    assert got == pytest.approx(brute_maj_at_k(samples, k, correct, key=key), abs=1e-12)


def test_maj_at_k_is_not_first_k():
    # The first three samples vote '1' (wrong); a random 3 of these 5 usually vote '2'.
    samples = ["1", "1", "2", "2", "2"]

    def correct(a):
        return a == "2"

    first_k = float(correct(majority_vote(samples[:3])[0]))
    assert first_k == 0.0
    # 3-subsets with at least two '2's: C(3,2)*C(2,1) + C(3,3) = 7 of C(5,3) = 10
    assert maj_at_k(samples, 3, correct) == pytest.approx(0.7)
    assert maj_at_k(samples[::-1], 3, correct) == pytest.approx(0.7)  # order-free here


def test_maj_at_k_special_k():
    samples = ["4", None, "5", "4", "4", "6", None, "4"]

    def correct(a):
        return a == "4"

    assert maj_at_k(samples, 1, correct) == pytest.approx(4 / 8)  # None scores 0
    assert maj_at_k(samples, len(samples), correct) == 1.0
    assert maj_at_k([None, None, None], 2, correct) == 0.0
    with pytest.raises(ValueError):
        maj_at_k(samples, 9, correct)


def test_maj_at_k_monte_carlo_is_close_and_seeded():
    rng = np.random.default_rng(0)
    samples = [str(v) for v in rng.choice([1, 2, 3], size=20, p=[0.45, 0.35, 0.2])]

    def correct(a):
        return a == "1"

    exact = maj_at_k(samples, 5, correct, n_resamples=math.comb(20, 5))  # exact path
    assert exact == pytest.approx(brute_maj_at_k(samples, 5, correct))
    mc = maj_at_k(samples, 5, correct, n_resamples=4000, seed=1)  # C(20,5) = 15504 > 4000
    assert mc == maj_at_k(samples, 5, correct, n_resamples=4000, seed=1)
    assert mc == pytest.approx(exact, abs=0.03)  # sd of the MC mean is < 0.008


def test_maj_at_k_monte_carlo_keeps_sample_order_for_ties():
    # k=2 of ten '1's then ten '2's: every mixed pair is a tie, won by '1' (first in sample
    # order). Exact: (C(10,2) + 10*10) / C(20,2) = 145/190. A Monte-Carlo that shuffled the
    # subset order would break ties at random and converge to 95/190 instead.
    samples = ["1"] * 10 + ["2"] * 10

    def correct(a):
        return a == "1"

    assert maj_at_k(samples, 2, correct) == pytest.approx(145 / 190)  # exact (190 <= 1000)
    assert maj_at_k(samples, 2, correct, n_resamples=150) == pytest.approx(145 / 190, abs=0.1)


def test_maj_at_k_calls_correct_once_per_distinct_answer():
    calls = []

    def correct(a):
        calls.append(a)
        return a == "1"

    maj_at_k(["1", "2", "1", "3", "2", "1"], 3, correct)
    assert sorted(calls) == sorted(set(calls))


# --- paired_bootstrap ------------------------------------------------------------------------
def test_paired_bootstrap_detects_clear_difference():
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.4).astype(float)
    b = np.maximum(a, rng.random(300) < 0.3)  # B solves all A solves, plus more
    res = paired_bootstrap(a, b, n_resamples=2000)
    assert res["diff"] == pytest.approx(b.mean() - a.mean())
    assert res["diff"] > 0 and 0 < res["lo"] < res["diff"] < res["hi"]
    assert res["p_value"] < 0.001
    swapped = paired_bootstrap(b, a, n_resamples=2000)
    assert swapped["diff"] == pytest.approx(-res["diff"])
    assert swapped["p_value"] < 0.001


def test_paired_bootstrap_identical_inputs():
    a = [1, 0, 1, 1, 0, 1, 0, 0]
    res = paired_bootstrap(a, a)
    assert res == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p_value": 1.0}


def test_paired_bootstrap_no_real_difference_has_large_p():
    rng = np.random.default_rng(2)
    a = (rng.random(200) < 0.5).astype(float)
    b = a.copy()
    flip = rng.choice(200, 20, replace=False)  # 10 fixed, 10 broken: net zero
    b[flip[:10]] = 1 - b[flip[:10]]
    b[flip[10:]] = 1 - b[flip[10:]]
    res = paired_bootstrap(a, b, n_resamples=2000)
    assert res["lo"] <= 0 <= res["hi"]
    assert res["p_value"] > 0.3


def test_paired_bootstrap_p_agrees_with_interval():
    rng = np.random.default_rng(4)
    for _ in range(5):
        a = (rng.random(80) < 0.5).astype(float)
        b = (rng.random(80) < 0.62).astype(float)
        res = paired_bootstrap(a, b, n_resamples=4000, seed=1)
        excludes_zero = res["lo"] > 0 or res["hi"] < 0
        if abs(res["p_value"] - 0.05) > 0.01:  # away from the boundary, the two must agree
            assert excludes_zero == (res["p_value"] < 0.05)


def test_paired_bootstrap_validates():
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])
    assert math.isnan(paired_bootstrap([], [])["p_value"])


# --- mcnemar ---------------------------------------------------------------------------------
def paired_lists(b01, b10, n11=3, n00=4):
    a = [0] * b01 + [1] * b10 + [1] * n11 + [0] * n00
    b = [1] * b01 + [0] * b10 + [1] * n11 + [0] * n00
    return a, b


@pytest.mark.parametrize("b01,b10,p", [
    (0, 10, 0.001953125),     # 2 / 2^10
    (10, 0, 0.001953125),
    (1, 9, 0.021484375),      # 2 * (1 + 10) / 2^10
    (2, 8, 0.109375),         # 2 * (1 + 10 + 45) / 2^10
    (5, 5, 1.0),
    (7, 7, 1.0),
    (0, 0, 1.0),              # no discordant pairs: no evidence
    (0, 1, 1.0),
])
def test_mcnemar_known_p_values(b01, b10, p):
    res = mcnemar(*paired_lists(b01, b10))
    assert (res["b01"], res["b10"]) == (b01, b10)
    assert res["statistic"] == min(b01, b10)
    assert res["p_value"] == pytest.approx(p, rel=1e-12)


def test_mcnemar_large_counts_and_inputs():
    res = mcnemar(*paired_lists(1400, 1600))  # 2^3000 overflows a float; must not crash
    assert 0.0 < res["p_value"] < 0.001
    assert mcnemar([True, False, True], [1.0, 1.0, 0.0])["b01"] == 1
    with pytest.raises(ValueError):
        mcnemar([0, 2], [1, 1])
    with pytest.raises(ValueError):
        mcnemar([0, 1], [1])


# --- plot_accuracy_by_steps ------------------------------------------------------------------
SERIES = {
    "cot": {1: (0.95, 0.9, 0.98), 2: (0.9, 0.84, 0.95), 4: (0.7, 0.6, 0.8), 8: (0.3, 0.2, 0.4)},
    "direct": {2: (0.6, 0.5, 0.7), 1: (0.8, 0.7, 0.9), 4: (0.3, 0.2, 0.4), 8: (0.05, 0.0, 0.1)},
}


def test_plot_writes_png_atomically(tmp_path):
    out = tmp_path / "plots" / "acc_by_steps.png"  # directory is created
    got = plot_accuracy_by_steps(SERIES, out, "accuracy vs steps", train_max_steps=4)
    assert got == str(out)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert out.stat().st_size > 1000
    assert [p.name for p in out.parent.iterdir()] == ["acc_by_steps.png"]  # no temp file left
    plot_accuracy_by_steps(SERIES, out, "again")  # overwriting in place works
    assert [p.name for p in out.parent.iterdir()] == ["acc_by_steps.png"]


def test_plot_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        plot_accuracy_by_steps(SERIES, tmp_path / "a.png", "t")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        plot_accuracy_by_steps({}, tmp_path / "a.png", "t")


def test_training_curves_plot_loss_validation_and_accuracy(tmp_path):
    records = [{"step": s, "loss": 2.0 / s, "lr": 1e-3} for s in range(1, 21)]
    records += [{"step": 10, "loss": 0.2, "val_loss": 0.3, "val_accuracy": 0.4},
                {"step": 20, "loss": 0.1, "val_loss": 0.2, "val_accuracy": 0.9}]
    out = plot_training_curves(records, tmp_path / "loss.png", "train")
    with_accuracy = (tmp_path / "loss.png").read_bytes()
    assert out == str(tmp_path / "loss.png") and with_accuracy.startswith(b"\x89PNG")
    plot_training_curves(records[:20], tmp_path / "loss.png", "train")  # no validation: one panel
    assert (tmp_path / "loss.png").read_bytes() != with_accuracy
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]
    with pytest.raises(ValueError, match="no loss"):
        plot_training_curves([{"step": 1, "lr": 0.1}], tmp_path / "x.png")
