"""Metrics: from sample records to every rate with its 95% interval over problems.

`summarize` is the entry point: one block of metrics overall, per n_steps and per task family.
A problem's value of a 0/1 metric is the mean over its samples; with several samples per problem
`ks` adds unbiased pass@k and maj@k. Intervals are bootstraps over problems (step accuracy pools
steps, so its interval resamples problems and takes the ratio).

Step metrics (step accuracy, valid chains, right answer through a wrong chain, the first wrong
step) cover only the problems whose steps are checkable; answer-only problems (samples with
`steps_checkable: False`) are scored on the answer alone. A block says `steps_checkable` (every
problem's were) and, when some were not, `steps_checkable_problems`; with none, the step metrics
are absent rather than 0. `truncated` is the share of samples cut off by their token budget.

Compute: `tokens_per_problem` is the tokens generated for a problem, summed over its samples (a
search's rejected lines and discarded samples included: `generated_tokens`), with its interval;
a search run also reports `steps_retried_per_problem` and `gave_up_per_problem`.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from reasonlm.answer import answer_key, answers_match
from reasonlm.stats import bootstrap_ci, maj_at_k, pass_at_k

RATES = {"accuracy": "correct", "flexible_accuracy": "flexible_correct", "extraction_failed": "extraction_failed",
         "chain_valid": "chain_valid", "right_answer_wrong_chain": "right_answer_wrong_chain",
         "lmeval_strict_match": "lmeval_strict_correct", "lmeval_flexible_extract": "lmeval_flexible_correct",
         "truncated": "truncated"}
"""metric name -> the 0/1 field of a sample record it averages."""
STEP_RATES = ("chain_valid", "right_answer_wrong_chain")
"""The rates that judge steps: over the problems whose steps are checkable only."""
LOWER_IS_BETTER = {"extraction_failed", "right_answer_wrong_chain", "checker_errors", "truncated"}


def summarize(samples: list[dict], ks=()) -> dict:
    """Every metric with 95% bootstrap intervals over problems, overall, per n_steps and per family.

    With several samples per problem, a problem's value is the mean over its samples, and
    `ks` adds unbiased pass@k and maj@k (k <= samples per problem)."""
    problems = problem_table(samples, ks)
    out = block(problems)
    by_steps, by_family = defaultdict(list), defaultdict(list)
    for p in problems:
        by_steps[p["n_steps"]].append(p)
        by_family[p["family"]].append(p)
    out["by_steps"] = {str(k): block(v) for k, v in sorted(by_steps.items())}
    out["by_family"] = {k: block(v) for k, v in sorted(by_family.items())}
    return out


def default_ks(samples: int) -> list[int]:
    return [k for k in (2 ** i for i in range(1, 12)) if k <= samples]  # pass@1 = accuracy


def problem_table(samples: list[dict], ks=()) -> list[dict]:
    """One entry per problem: its samples' mean of every 0/1 metric, step counts, pass@k, maj@k."""
    groups: dict = defaultdict(list)
    for s in samples:
        groups[(s.get("split", ""), s["id"])].append(s)
    table = []
    for (split, pid), group in groups.items():
        first = group[0]
        p = {"split": split, "id": pid, "n_steps": int(first.get("n_steps") or 0), "family": first.get("family") or "",
             "samples": len(group), "steps_ok": sum(s["steps_ok"] for s in group),
             "steps_total": sum(s["steps_total"] for s in group),
             "first_bad": [(s["first_bad_step"], int(first.get("n_steps") or 0) or s["steps_total"])
                           for s in group if s.get("first_bad_step")],
             "checker_errors": sum(1 for s in group if s.get("checker_error")),
             "steps_checkable": all(s.get("steps_checkable", True) for s in group), "values": {},
             "generated": (sum(s.get("generated_tokens", s.get("tokens", 0)) for s in group)
                           if all("tokens" in s or "generated_tokens" in s for s in group) else None),
             "retried": (sum(s["steps_retried"] for s in group) if all("steps_retried" in s for s in group) else None),
             "gave_up": sum(s.get("gave_up", 0) for s in group)}
        for metric, key in RATES.items():
            if all(key in s for s in group):
                p["values"][metric] = sum(bool(s[key]) for s in group) / len(group)
        n, c = len(group), sum(bool(s["correct"]) for s in group)
        gold = first.get("gold", "")
        for k in ks:
            if k <= n:
                p["values"][f"pass@{k}"] = pass_at_k(n, c, k)
                p["values"][f"maj@{k}"] = maj_at_k([s.get("answer") for s in group], k,
                                                    lambda a, g=gold: answers_match(a, g), key=answer_key)
        table.append(p)
    return table


def block(problems: list[dict]) -> dict:
    """Every metric over a set of problems, with counts and 95% bootstrap intervals."""
    m: dict = {"n": len(problems), "n_samples": sum(p["samples"] for p in problems)}
    checkable = [p for p in problems if p["steps_checkable"]]
    m["steps_checkable"] = len(checkable) == len(problems)
    if not m["steps_checkable"]:
        m["steps_checkable_problems"] = len(checkable)
    for group, names in ((problems, _shared(problems, exclude=STEP_RATES)), (checkable, _shared(checkable, STEP_RATES))):
        for name in names:
            point, lo, hi = bootstrap_ci([p["values"][name] for p in group])
            m[name], m[f"{name}_ci"] = _r4(point), [_r4(lo), _r4(hi)]
    if problems and all(p.get("generated") is not None for p in problems):
        point, lo, hi = bootstrap_ci([p["generated"] for p in problems])
        m["tokens_per_problem"], m["tokens_per_problem_ci"] = round(point, 1), [round(lo, 1), round(hi, 1)]
    if problems and all(p.get("retried") is not None for p in problems):
        m["steps_retried_per_problem"] = round(sum(p["retried"] for p in problems) / len(problems), 3)
        m["gave_up_per_problem"] = round(sum(p["gave_up"] for p in problems) / len(problems), 3)
    m["extraction_failures"] = round(sum(p["values"].get("extraction_failed", 0) * p["samples"] for p in problems))
    if "truncated" in m:
        m["truncated_samples"] = round(sum(p["values"]["truncated"] * p["samples"] for p in problems))
    errors = sum(p["checker_errors"] for p in problems)
    if errors:
        m["checker_errors"] = errors
    if not checkable:  # answer-only: step metrics are absent, not 0
        return m
    problems = checkable
    m["right_answer_wrong_chain_count"] = round(sum(p["values"].get("right_answer_wrong_chain", 0) * p["samples"]
                                                    for p in problems))
    point, lo, hi = _ratio_ci([p["steps_ok"] for p in problems], [p["steps_total"] for p in problems])
    m["step_accuracy"], m["step_accuracy_ci"] = _r4(point), [_r4(lo), _r4(hi)]
    m["steps_checked"] = sum(p["steps_total"] for p in problems)
    bad = [(pos, total) for p in problems for pos, total in p["first_bad"]]
    hist: dict = defaultdict(int)
    for pos, _ in bad:
        hist[str(pos)] += 1
    mean, lo, hi = bootstrap_ci([pos for pos, _ in bad]) if bad else (None, None, None)
    m["first_bad_step"] = {"n": len(bad), "mean": _r4(mean), "mean_ci": [_r4(lo), _r4(hi)],
                           "relative_mean": _r4(sum(pos / max(t, 1) for pos, t in bad) / len(bad)) if bad else None,
                           "hist": dict(sorted(hist.items(), key=lambda kv: int(kv[0])))}
    return m


def _shared(problems: list[dict], only=None, exclude=()) -> list[str]:
    """The metrics every problem has (in the first problem's order), within `only`, not in `exclude`."""
    if not problems:
        return []
    return [k for k in problems[0]["values"] if k not in exclude and (only is None or k in only)
            and all(k in p["values"] for p in problems)]


def _r4(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 4)


def _ratio_ci(num, den, n_resamples: int = 1000, seed: int = 0):
    """sum(num) / sum(den) with a bootstrap interval over problems (for pooled step accuracy)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    if den.sum() == 0:
        return None, None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), (n_resamples, len(num)))
    d = den[idx].sum(1)
    boot = num[idx].sum(1)[d > 0] / d[d > 0]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(num.sum() / den.sum()), float(lo), float(hi)
