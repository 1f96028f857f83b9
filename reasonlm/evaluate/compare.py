"""Comparing two reports of the same suite: B - A per source, paired bootstrap and exact McNemar.

    reasonlm eval compare A/report.json B/report.json [--metric chain_valid]
"""
from __future__ import annotations

import json
import os
from collections import defaultdict

from reasonlm.evaluate.errors import EvalError
from reasonlm.evaluate.metrics import RATES
from reasonlm.stats import mcnemar, paired_bootstrap


def read_json(path: str, what: str):
    """The JSON file at `path`; a missing or unreadable `what` (report, baseline) is one line."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as e:
        raise EvalError(f"{path} is not a JSON {what} ({e})") from None


def load_report(path: str) -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, "report.json")
    report = read_json(path, "report")
    if not isinstance(report, dict) or "splits" not in report:
        raise EvalError(f"{path} is not a report written by `reasonlm eval`")
    report["_path"] = path
    return report


def per_problem(report: dict, metric: str = "accuracy") -> dict[str, list[int]]:
    """{source/problem id: 0/1 outcome of every sample}: embedded for accuracy, else from samples.jsonl."""
    if metric == "accuracy" and report.get("per_problem"):
        return report["per_problem"]
    key = RATES.get(metric)
    if key is None:
        raise EvalError(f"cannot compare {metric!r}; choose one of {', '.join(RATES)}")
    name = report.get("samples_path") or "samples.jsonl"
    # the samples are written beside the report; a report naming another place is not trusted to
    if not isinstance(name, str) or os.path.basename(name) != name or name in (".", ".."):
        raise EvalError(f"{report['_path']}: samples_path {name!r} is not a file name beside the report")
    path = os.path.join(os.path.dirname(report["_path"]), name)
    if not os.path.exists(path):
        raise EvalError(f"{report['_path']}: per-problem results not found ({path} is missing)")
    out: dict = defaultdict(list)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                s = json.loads(line)
            except ValueError:
                raise EvalError(f"{path}:{n}: not a JSON sample") from None
            if not isinstance(s, dict) or "id" not in s:
                raise EvalError(f"{path}:{n}: not a sample written by `reasonlm eval`")
            if key not in s:
                raise EvalError(f"{path}: samples have no {key!r} (metric {metric!r} not measured for this source)")
            out[f"{s.get('split', '')}/{s['id']}"].append(int(bool(s[key])))
    return dict(out)


def compare(path_a: str, path_b: str, metric: str = "accuracy") -> dict:
    """B - A on the same problems: paired bootstrap interval and p, exact McNemar, per source and overall."""
    a, b = load_report(path_a), load_report(path_b)
    fa, fb = a.get("dataset_fingerprint"), b.get("dataset_fingerprint")
    pa, pb = per_problem(a, metric), per_problem(b, metric)
    if (fa and fb and fa != fb) or set(pa) != set(pb):
        raise EvalError(f"{a['_path']} and {b['_path']} were evaluated on different problems (dataset {fa}, "
                        f"{len(pa)} problems vs {fb}, {len(pb)} problems): compare needs two runs of the same suite")
    groups = defaultdict(list)
    for pid in pa:
        groups[pid.split("/", 1)[0]].append(pid)
    if len(groups) > 1:
        groups["overall"] = list(pa)
    rows = []
    for name, ids in groups.items():
        x = [sum(pa[i]) / len(pa[i]) for i in ids]
        y = [sum(pb[i]) / len(pb[i]) for i in ids]
        boot = paired_bootstrap(x, y)
        mc = mcnemar([pa[i][0] for i in ids], [pb[i][0] for i in ids])
        rows.append({"source": name, "n": len(ids), "a": sum(x) / len(x), "b": sum(y) / len(y), **boot,
                     "mcnemar_b01": mc["b01"], "mcnemar_b10": mc["b10"], "mcnemar_p": mc["p_value"]})
    return {"a": a["_path"], "b": b["_path"], "metric": metric, "rows": rows}


def compare_markdown(result: dict) -> str:
    m = result["metric"]
    lines = [f"A = {result['a']}", f"B = {result['b']}", "",
             f"| source | problems | A {m} | B {m} | B - A [95% CI] | paired bootstrap p | McNemar (A only / B only, p) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        p = "< 0.0001" if r["p_value"] == 0 else f"{r['p_value']:.4f}"
        lines.append(f"| {r['source']} | {r['n']} | {r['a']:.3f} | {r['b']:.3f} | {r['diff']:+.3f} [{r['lo']:+.3f}, "
                     f"{r['hi']:+.3f}] | {p} | {r['mcnemar_b10']} / {r['mcnemar_b01']}, {r['mcnemar_p']:.4f} |")
    lines += ["", "McNemar uses each problem's first sample; the bootstrap uses the per-problem mean over samples."]
    return "\n".join(lines) + "\n"
