"""The statistics behind every number the evaluator prints: intervals, pass@k, maj@k, paired tests.

Small eval sets (hundreds of problems, sometimes a handful per step-count bucket) make point
estimates noisy, so every accuracy we report carries an interval, and every "A beats B" claim
carries a paired test. Everything here is plain Python + numpy (no scipy) and deterministic
for a given seed, so two runs of the evaluator on the same outputs print the same numbers.

    bootstrap_ci       percentile bootstrap interval for the mean (or any numpy reduction)
    wilson_interval    closed-form interval for a proportion; fine for tiny counts
    pass_at_k          unbiased pass@k from n samples with c correct (Chen et al. 2021)
    majority_vote      self-consistency vote over extracted answers
    maj_at_k           expected majority-vote accuracy of k samples, from n >= k samples
    paired_bootstrap   difference of two systems on the same problems, with interval and p
    mcnemar            exact McNemar test for paired 0/1 outcomes
    draw_seed          a sampling seed from a run's seed and where a draw happens (eval, search)

The plots of these numbers are reasonlm/plots.py.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from statistics import NormalDist

import numpy as np

# Bootstrap index matrices are drawn in row blocks of at most this many cells (8 bytes each,
# so ~32 MB per block), which keeps 10k resamples of a 5k-problem eval from needing gigabytes.
# Drawing (r1, n) then (r2, n) from a numpy Generator yields exactly the same indices as one
# (r1 + r2, n) draw (tests/test_stats.py checks this), so the block size never changes a result.
_MAX_BLOCK_CELLS = 1 << 22


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return confidence


def _as_1d(values, name: str = "values") -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be a flat list of per-problem scores, got shape {x.shape}")
    return x


def _resampled_stat(x: np.ndarray, stat, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """stat(x[idx]) for n_resamples bootstrap index rows idx, i.e. one rng.integers(0, n,
    (n_resamples, n)) draw, taken in row blocks to bound memory (same numbers either way)."""
    n = len(x)
    rows_per_block = max(1, _MAX_BLOCK_CELLS // n)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, rows_per_block):
        stop = min(start + rows_per_block, n_resamples)
        idx = rng.integers(0, n, (stop - start, n))
        out[start:stop] = stat(x[idx], axis=1)
    return out


# --- intervals -------------------------------------------------------------------------------
def bootstrap_ci(values, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                 stat=np.mean) -> tuple[float, float, float]:
    """Percentile bootstrap: (stat(values), lo, hi).

    Resample the n per-problem scores with replacement B = n_resamples times, compute the
    statistic on each resample, and take the empirical quantiles of those B values:

        lo = q_{alpha/2},  hi = q_{1 - alpha/2},  alpha = 1 - confidence

    `stat` must be a numpy-style reduction taking `axis=` (np.mean, np.median, ...), because all
    resamples are reduced at once along axis 1. Same seed, same interval. n = 0 gives a nan
    triple (nothing to estimate); n = 1 gives (v, v, v), every resample being the same single
    score: a zero-width interval that says "no information about spread", not "certain".
    For a 0/1 proportion with few problems (or all 0s / all 1s, where the bootstrap interval
    collapses to a point) prefer `wilson_interval`.
    """
    _check_confidence(confidence)
    x = _as_1d(values)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    boot = _resampled_stat(x, stat, n_resamples, rng)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return (float(stat(x)), float(lo), float(hi))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """Wilson score interval for a proportion k/n: (k/n, lo, hi).

    With p = k/n and z the two-sided normal quantile for `confidence`:

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2)

    Unlike the textbook p +- z sqrt(p(1-p)/n), it stays inside [0, 1] and does not collapse
    to zero width at k = 0 or k = n, which is why we use it for buckets with a few problems.
    n = 0 gives a nan triple.
    """
    _check_confidence(confidence)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan, math.nan)
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)  # stdlib, so no scipy
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # clip only float round-off: mathematically the interval is already inside [0, 1]
    return (p, max(0.0, centre - half), min(1.0, centre + half))


# --- sampling-based metrics ------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, "Codex").

        pass@k = 1 - C(n - c, k) / C(n, k)

    i.e. the probability that a uniformly random size-k subset of the n samples contains at
    least one correct one. The naive 1 - (1 - c/n)^k is biased (it underestimates for k > 1);
    this one is exactly unbiased for the true pass@k. The binomials overflow quickly, so we use

        C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i)

    which is a product of c numbers in [0, 1]. Requires 1 <= k <= n and 0 <= c <= n.
    pass_at_k(n, c, 1) == c / n.
    """
    if k < 1 or k > n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got n={n}, k={k} (draw at least k samples)")
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if n - c < k:  # every size-k subset must contain a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_vote(answers: list[str | None], key=None) -> tuple[str | None, int]:
    """Self-consistency vote: (most common answer, its count); (None, 0) if nothing to vote on.

    None entries are extraction failures and do not vote. `key` maps an answer to the thing
    that is counted, e.g. a number normaliser so that '12', '12.0' and '$12' are one vote
    bucket; if key(answer) is None the answer is treated as a failure too. The answer
    returned is the first-seen raw string of the winning bucket. Ties go to the bucket that
    appeared first in `answers`, which is deterministic and, for i.i.d. samples, as good as
    a random tie-break.
    """
    buckets: dict = {}  # key -> [count, first raw answer]; dicts keep first-occurrence order
    for ans in answers:
        if ans is None:
            continue
        kk = ans if key is None else key(ans)
        if kk is None:
            continue
        if kk in buckets:
            buckets[kk][0] += 1
        else:
            buckets[kk] = [1, ans]
    best_answer, best_count = None, 0
    for count, ans in buckets.values():
        if count > best_count:  # strict '>' keeps the earliest bucket on ties
            best_answer, best_count = ans, count
    return best_answer, best_count


def maj_at_k(samples: list[str | None], k: int, correct, key=None, n_resamples: int = 1000,
             seed: int = 0) -> float:
    """maj@k for one problem: the expected accuracy of a majority vote over k samples.

    Given n >= k sampled answers (None = extraction failure), return

        maj@k = mean over all size-k subsets S of the n samples of correct(majority_vote(S))

    where a subset whose vote is empty (all failures) scores 0. Subsets keep the original
    sample order, so the tie-break in `majority_vote` sees them in the order they were drawn.

    Why not just vote over the first k samples? For i.i.d. samples that is also an unbiased
    estimate, but it throws away n - k samples and is much noisier; and if the samples are
    not exchangeable (sorted by temperature, de-duplicated, retried after failures), the
    first k are a biased slice. Averaging over all subsets is the U-statistic built from all n
    samples: same expectation, lower variance, no dependence on sample order (exactly as
    pass_at_k does for pass@k).

    There are C(n, k) subsets. When C(n, k) <= n_resamples we enumerate them exactly;
    otherwise we average over n_resamples uniformly random size-k subsets drawn with a seeded
    generator (an unbiased Monte-Carlo estimate of the same quantity, deterministic per seed).

    `correct(answer) -> bool | float` judges a voted answer (called once per distinct answer).
    `key` is passed to the vote; see `majority_vote`.
    """
    n = len(samples)
    if k < 1 or k > n:
        raise ValueError(f"maj@k needs 1 <= k <= n samples, got n={n}, k={k}")
    # Apply `key` once per sample instead of once per sample per subset.
    keyed = [None if s is None else (s if key is None else key(s)) for s in samples]
    verdicts: dict = {}  # raw answer -> float(correct(answer)); correct() may be slow

    def subset_score(idx) -> float:
        winner, _ = majority_vote([keyed[i] for i in idx])
        if winner is None:
            return 0.0
        # the raw answer majority_vote(..., key) would return: first sample of the winning bucket
        answer = next(samples[i] for i in idx if keyed[i] == winner)
        if answer not in verdicts:
            verdicts[answer] = float(correct(answer))
        return verdicts[answer]

    if math.comb(n, k) <= n_resamples:
        subsets = itertools.combinations(range(n), k)  # lexicographic, each in sample order
        scores = [subset_score(idx) for idx in subsets]
    else:
        # Uniform random k-subsets: the first k columns of a random permutation per row,
        # sorted back into sample order to match the exact enumeration above.
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((n_resamples, n)), axis=1)
        subsets = np.sort(perms[:, :k], axis=1)
        scores = [subset_score(idx) for idx in subsets.tolist()]
    return float(np.mean(scores))


# --- comparing two systems -------------------------------------------------------------------
def paired_bootstrap(a, b, n_resamples: int = 10000, seed: int = 0,
                     confidence: float = 0.95) -> dict:
    """Paired bootstrap for "is system B better than system A on these problems?".

    a[i] and b[i] are the two systems' scores on problem i (same problems, same order).
    Resample problems (not scores) with replacement, keeping each pair together, so that the
    per-problem correlation between systems is kept; this is what makes the paired test
    far more sensitive than comparing two independent intervals. With d_i = b_i - a_i:

        diff     = mean(d) = mean(b) - mean(a)
        d*_j     = mean of d over the j-th resample, j = 1..B
        lo, hi   = percentile interval of the d*_j at `confidence`
        p_value  = min(1, 2 * share of d*_j on the other side of 0 from diff)

    "Other side" counts d*_j <= 0 when diff > 0 and d*_j >= 0 when diff < 0 (ties with 0
    count against the difference, so the test is conservative); diff == 0 gives p = 1. This
    is the two-sided p-value obtained by inverting the percentile interval: p < 1 - confidence
    exactly when the interval excludes 0 (up to quantile interpolation). Its resolution is 1/B:
    p = 0 means "below 1/n_resamples", so report it as p < 1/B, not as zero.
    """
    _check_confidence(confidence)
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if len(x) != len(y):
        raise ValueError(f"paired scores need equal lengths, got {len(x)} and {len(y)}")
    if len(x) == 0:
        return {"diff": math.nan, "lo": math.nan, "hi": math.nan, "p_value": math.nan}
    d = y - x
    rng = np.random.default_rng(seed)
    boot = _resampled_stat(d, np.mean, n_resamples, rng)
    diff = float(d.mean())
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    if diff > 0:
        other_side = np.mean(boot <= 0)
    elif diff < 0:
        other_side = np.mean(boot >= 0)
    else:
        other_side = 1.0
    return {"diff": diff, "lo": float(lo), "hi": float(hi),
            "p_value": float(min(1.0, 2.0 * other_side))}


def _as_binary(values, name: str) -> list[int]:
    out = []
    for v in values:
        if v not in (0, 1):  # accepts bools, ints and 0.0 / 1.0
            raise ValueError(f"{name} must hold 0/1 outcomes, got {v!r}")
        out.append(int(v))
    return out


def mcnemar(a, b) -> dict:
    """Exact McNemar test for paired 0/1 outcomes (A and B right/wrong on the same problems).

    Only discordant problems carry information about which system is better:

        b01 = #{a_i = 0, b_i = 1}   (B fixes what A got wrong)
        b10 = #{a_i = 1, b_i = 0}   (B breaks what A got right)

    Under H0 (equal accuracy) each of the m = b01 + b10 discordant problems is equally likely
    to go either way, so b01 ~ Binomial(m, 1/2). The exact two-sided p-value is

        p = min(1, 2 * sum_{i=0}^{min(b01, b10)} C(m, i) / 2^m)

    (m = 0 gives p = 1). `statistic` is min(b01, b10), the binomial test statistic (as in
    statsmodels' exact McNemar). Exact integer arithmetic, so it is right for any m, including
    the small counts where the chi-square version is unreliable.
    """
    x, y = _as_binary(a, "a"), _as_binary(b, "b")
    if len(x) != len(y):
        raise ValueError(f"paired outcomes need equal lengths, got {len(x)} and {len(y)}")
    b01 = sum(1 for u, v in zip(x, y) if u == 0 and v == 1)
    b10 = sum(1 for u, v in zip(x, y) if u == 1 and v == 0)
    m, low = b01 + b10, min(b01, b10)
    tail = sum(math.comb(m, i) for i in range(low + 1))
    p_value = min(1.0, 2 * tail / 2**m)  # int / int is correctly rounded even for huge m
    return {"b01": b01, "b10": b10, "statistic": low, "p_value": p_value}


def draw_seed(*parts) -> int:
    """A sampling seed (56 bits) from a seed and where a draw happens, joined by ':': eval's
    (run seed, 'source/id#sample'), search's (problem seed, 'line', line, attempt, candidate)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:7], "big")
