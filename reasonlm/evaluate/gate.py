"""The CI gate: does a report fall below its baseline (beyond the 95% interval) or a threshold?

    reasonlm eval baseline REPORT.json eval/baselines/NAME.json      make_baseline
    reasonlm eval SUITE.yaml ... --baseline eval/baselines/NAME.json  check_gate (exit 1 on failure)
"""
from __future__ import annotations

from reasonlm.evaluate.compare import read_json
from reasonlm.evaluate.errors import EvalError
from reasonlm.evaluate.metrics import LOWER_IS_BETTER


def headline_metrics(report: dict) -> dict[str, list]:
    """{'overall.accuracy': [value, lo, hi], 'splits.test.chain_valid': [...], ...}"""
    blocks = [(f"splits.{k}", v) for k, v in (report.get("splits") or {}).items()]
    if report.get("overall") is not None:
        blocks.insert(0, ("overall", report["overall"]))
    out = {}
    for prefix, b in blocks:
        for key, value in b.items():
            ci = b.get(f"{key}_ci")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and ci:
                out[f"{prefix}.{key}"] = [value, *ci]
    return out


def make_baseline(report: dict) -> dict:
    """What the gate needs from a report: its identity and every headline metric with its interval."""
    return {"kind": "reasonlm-eval-baseline", "suite": report.get("suite"), "model": report.get("model"),
            "adapter": report.get("adapter"), "dataset_fingerprint": report.get("dataset_fingerprint"),
            "created": report.get("created"), "metrics": headline_metrics(report)}


def load_baseline(path: str) -> dict:
    raw = read_json(path, "baseline")
    if isinstance(raw, dict) and raw.get("kind") == "reasonlm-eval-baseline":
        return raw
    if isinstance(raw, dict) and "splits" in raw:
        return make_baseline(raw)
    raise EvalError(f"{path} is neither a baseline (reasonlm eval baseline REPORT OUT) nor a report")


def check_gate(report: dict, baseline: dict | None = None, metrics=(), thresholds=None,
               min_accuracy: float = 0.0) -> list[str]:
    """Why the gate fails (empty = pass).

    Against a baseline: a metric fails when it is worse than the baseline by more than the
    larger of the two 95% interval half-widths on that side (the baseline's and this run's).
    Thresholds are absolute limits: a bare name is the overall value. Lower is better for
    extraction_failed and right_answer_wrong_chain."""
    failures = []
    current = headline_metrics(report)
    worse = lambda name: name.rsplit(".", 1)[-1] in LOWER_IS_BETTER
    acc = report.get("accuracy")
    if min_accuracy and (acc is None or acc < min_accuracy):
        failures.append(f"accuracy {acc} is below min_accuracy {min_accuracy}")
    for name, limit in (thresholds or {}).items():
        path = name if name.startswith(("overall.", "splits.")) else f"overall.{name}"
        if path not in current:
            failures.append(f"{path}: not in the report (threshold {limit})")
            continue
        value = current[path][0]
        if (value > limit) if worse(path) else (value < limit):
            failures.append(f"{path} = {value:.4f} is {'above' if worse(path) else 'below'} its threshold {limit}")
    if baseline:
        fb, fr = baseline.get("dataset_fingerprint"), report.get("dataset_fingerprint")
        if fb and fr and fb != fr:
            raise EvalError(f"the baseline was measured on other problems (dataset {fb}, this run {fr}): "
                            "re-create it with `reasonlm eval baseline REPORT OUT`")
        for path, (base, blo, bhi) in sorted(baseline.get("metrics", {}).items()):
            if metrics and path.rsplit(".", 1)[-1] not in metrics:
                continue
            if path not in current:
                failures.append(f"{path}: in the baseline but not in this report")
                continue
            value, lo, hi = current[path]
            if None in (base, value):
                continue
            blo, bhi = (base if blo is None else blo), (base if bhi is None else bhi)
            lo, hi = (value if lo is None else lo), (value if hi is None else hi)
            if worse(path):  # how far it rose, against how far each interval reaches on that side
                drop, allowed = value - base, max(bhi - base, value - lo)
            else:
                drop, allowed = base - value, max(base - blo, hi - value)
            if drop > allowed + 1e-9:
                failures.append(f"{path} = {value:.4f} is {drop:.4f} {'above' if worse(path) else 'below'} the baseline "
                                f"{base:.4f} (allowed {allowed:.4f}, the 95% interval)")
    return failures
