"""The eval outputs: report.json, report.md, samples.jsonl, config.yaml, accuracy_by_steps.png.

`build_report` turns sample records into the report (config, model, adapter, dataset fingerprint,
every metric with its 95% interval per source, per-problem correctness). `write_outputs` writes
everything a run leaves; `write_report` rewrites only the report files (the pipeline adds the
direct baseline, the RL model and the length ladder to a report without touching its samples). Every file is written atomically.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import os
import time
from collections import defaultdict

from reasonlm import outputs
from reasonlm.config import EvalConfig, resolved_yaml
from reasonlm.evaluate.metrics import default_ks, summarize
from reasonlm.plots import plot_accuracy_by_steps
from reasonlm.sources import Source, fingerprint
from reasonlm.stats import wilson_interval


def build_report(cfg: EvalConfig, sources: list[Source], skipped: dict, samples: list[dict], model_name: str,
                 adapter: str | None, fmt: str) -> dict:
    ks = cfg.ks or (default_ks(cfg.samples) if cfg.samples > 1 else [])
    splits = {s.name: summarize([r for r in samples if r["split"] == s.name], ks) for s in sources}
    per_problem: dict = defaultdict(list)
    for s in samples:
        per_problem[f"{s['split']}/{s['id']}"].append(int(bool(s["correct"])))
    report = {
        "suite": cfg.name or "eval", "description": cfg.description, "model": model_name, "adapter": adapter,
        "format": fmt, "prompt": cfg.prompt, "shots": cfg.shots, "samples_per_problem": cfg.samples,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "ks": ks, "search": cfg.search.method,
        "dataset_fingerprint": fingerprint(sources), "sources": {s.name: s.info for s in sources},
        "skipped": skipped, "splits": splits,
        "overall": summarize(samples, ks) if len(sources) > 1 else splits[sources[0].name],
        "samples_path": "samples.jsonl", "per_problem": dict(per_problem),
        "config": dataclasses.asdict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": {p: _version(p) for p in ("reasonlm", "torch", "transformers", "peft")},
    }
    report["accuracy"] = splits.get("test", {}).get("accuracy") if "test" in splits else report["overall"]["accuracy"]
    report["ood_accuracy"] = splits.get("test_ood", {}).get("accuracy")
    legacy = [s for s in ("test", "test_ood") if s in splits]
    report["by_steps"] = ({k: v["accuracy"] for s in legacy for k, v in splits[s]["by_steps"].items()} if legacy
                          else {k: v["accuracy"] for k, v in report["overall"]["by_steps"].items()})
    return report


def _version(package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


OUTPUT_FILES = ("report.json", "report.md", "samples.jsonl", "config.yaml", "accuracy_by_steps.png")  # write_outputs'


def write_outputs(directory: str, report: dict, samples: list[dict], cfg) -> None:
    """report.json, report.md, samples.jsonl, config.yaml and accuracy_by_steps.png (all or none)."""
    write_together(directory, report, {"samples.jsonl": "".join(json.dumps(s) + "\n" for s in samples),
                                       "config.yaml": resolved_yaml(cfg)})


def write_report(directory: str, report: dict) -> None:
    """report.json, report.md and accuracy_by_steps.png only (all or none)."""
    write_together(directory, report, {})


def write_together(directory: str, report: dict, files: dict[str, str]) -> None:
    """The report files plus `files` (name -> text), each under a temporary name until all are
    complete: a failure (a full disk) leaves the previous run's set whole, never a mix."""
    os.makedirs(directory, exist_ok=True)
    files = {**files, "report.json": json.dumps(report, indent=1), "report.md": markdown(report)}
    png, tmp_png = os.path.join(directory, "accuracy_by_steps.png"), os.path.join(directory, "accuracy_by_steps.tmp.png")
    with outputs.writing(directory, tmp_png):
        drawn = plot(report, tmp_png)
        outputs.atomic_write_all({os.path.join(directory, k): v for k, v in files.items()}, directory)
    if drawn:
        os.replace(tmp_png, png)
    elif os.path.exists(png):  # an older run's plot does not belong with this report
        os.remove(png)


def plot(report: dict, path: str) -> str | None:
    """Accuracy vs n_steps with 95% bands: with a length ladder (the pipeline's), one line per
    model up the ladder and a mark after the longest trained chain; otherwise one line per source
    (and per direct-answer and RL source)."""
    ladder = report.get("ladder") or {}
    if ladder.get("models"):
        series = {model: _points(by_steps) for model, by_steps in ladder["models"].items()}
        series = {k: v for k, v in series.items() if v}
        if series:
            return plot_accuracy_by_steps(series, path, title=f"{report.get('suite', 'eval')}: accuracy by n_steps "
                                          f"({ladder.get('family')}, fresh problems)",
                                          train_max_steps=ladder.get("trained_steps"))
    series = {}
    for label, rep in (("", report), ("direct ", report.get("direct") or {}), ("SFT+RL ", report.get("rl") or {})):
        for split, summary in (rep.get("splits") or {}).items():
            points = _points(summary.get("by_steps", {}))
            if points:
                series[f"{label}{split}"] = points
    if not series:
        return None
    return plot_accuracy_by_steps(series, path, title=f"{report.get('suite', 'eval')}: accuracy by n_steps")


def _points(by_steps: dict) -> dict:
    return {int(k): _band(m) for k, m in by_steps.items()
            if m.get("accuracy") is not None and None not in m.get("accuracy_ci", [None])}


def _band(m: dict) -> tuple:
    """(accuracy, lo, hi) of a bucket: the Wilson interval with one sample per problem (the
    bootstrap collapses to a point at 0% and 100%, common in small buckets), else the bootstrap."""
    n, ns = m.get("n"), m.get("n_samples")
    if n and (ns is None or ns == n):
        return wilson_interval(round(m["accuracy"] * n), n)
    return (m["accuracy"], *m["accuracy_ci"])


HEADLINE = [("accuracy", "accuracy"), ("flexible_accuracy", "flexible"), ("extraction_failed", "no final answer"),
            ("step_accuracy", "step accuracy"), ("chain_valid", "valid chains"),
            ("right_answer_wrong_chain", "right answer, wrong chain"), ("truncated", "cut off at budget")]


def markdown(report: dict) -> str:
    """Headline metrics per source, then by n_steps (with the direct baseline when the report
    has one), by task family, and where the first wrong step falls."""
    splits = report.get("splits") or {}
    direct = report.get("direct") or {}
    extra = sorted({k for m in splits.values() for k in m if k.startswith(("pass@", "maj@", "lmeval_"))
                    and not k.endswith("_ci")}, key=lambda k: (k.split("@")[0], int(k.split("@")[1]) if "@" in k else 0))
    cols = HEADLINE + [(k, k.replace("lmeval_", "lm-eval ")) for k in extra]
    title = f"{report.get('suite', 'eval')}: {report.get('model')}" + (f" + {report['adapter']}" if report.get("adapter") else "")
    lines = [f"### {title}", ""]
    if report.get("dataset_fingerprint"):
        lines += [f"dataset {report['dataset_fingerprint']}, {report.get('prompt', 'chat')} prompt, "
                  f"{report.get('shots', 0)}-shot, {report.get('samples_per_problem', 1)} sample(s)/problem at "
                  f"temperature {report.get('temperature', 0.0)}; 95% bootstrap intervals over problems", ""]
    if report.get("search", "greedy") != "greedy":
        lines += [f"search: {report['search']} ({_search_settings(report)}); tokens/problem counts every generated "
                  "token, rejected lines and discarded samples included", ""]
    lines += ["| source | problems | " + " | ".join(c for _, c in cols) + " | first bad step (mean) | tokens/problem |"
              + (" steps retried/problem |" if _searched(splits) else ""),
              "|---" * (len(cols) + 4 + _searched(splits)) + "|"]
    rows = list(splits.items()) + ([("overall", report["overall"])] if len(splits) > 1 and report.get("overall") else [])
    for name, m in rows:
        fb = (m.get("first_bad_step") or {}).get("mean")
        lines.append(f"| {name} | {m.get('n')} | " + " | ".join(_ci(m, k) for k, _ in cols) + f" | {'' if fb is None else fb} |"
                     + f" {_tokens(m)} |" + (f" {m.get('steps_retried_per_problem', '')} |" if _searched(splits) else ""))
    others = [(label, rep) for label, rep in (("SFT+RL accuracy", report.get("rl") or {}),
                                               ("direct accuracy", direct)) if rep]
    lines += ["", "| source | n_steps | problems | accuracy | " + "".join(f"{label} | " for label, _ in others)
              + "step accuracy | valid chains | no final answer | tokens/problem |", "|---" * (8 + len(others)) + "|"]
    for name, m in splits.items():
        for k, b in m.get("by_steps", {}).items():
            cells = [((rep.get("splits") or {}).get(name) or {}).get("by_steps", {}).get(k, {}).get("accuracy")
                     for _, rep in others]
            lines.append(f"| {name} | {k} | {b['n']} | {_ci(b, 'accuracy')} | "
                         + "".join(f"{'' if a is None else f'{a:.3f}'} | " for a in cells)
                         + f"{_ci(b, 'step_accuracy')} | {_ci(b, 'chain_valid')} | {_ci(b, 'extraction_failed')} | "
                         f"{_tokens(b)} |")
    lines += ladder_table(report.get("ladder") or {})
    lines += curriculum_table(((report.get("training") or {}).get("rl") or {}).get("curriculum") or {})
    families = (report.get("overall") or {}).get("by_family") or {}
    if families:
        lines += ["", "| task family | problems | accuracy | step accuracy | valid chains | no final answer |",
                  "|---|---|---|---|---|---|"]
        for fam, b in families.items():
            lines.append(f"| {fam} | {b['n']} | {_ci(b, 'accuracy')} | {_ci(b, 'step_accuracy')} | "
                         f"{_ci(b, 'chain_valid')} | {_ci(b, 'extraction_failed')} |")
    hists = {n: (m.get("first_bad_step") or {}).get("hist") for n, m in splits.items()}
    positions = sorted({int(p) for h in hists.values() if h for p in h})
    if positions:
        lines += ["", "First wrong step (samples with one, by position):", "",
                  "| source | " + " | ".join(map(str, positions)) + " |", "|---" * (len(positions) + 1) + "|"]
        for n, h in hists.items():
            lines.append(f"| {n} | " + " | ".join(str((h or {}).get(str(p), 0)) for p in positions) + " |")
    unchecked = {n: m for n, m in rows if not m.get("steps_checkable", True)}
    if unchecked:
        lines += ["", "Steps not checkable (answer-only problems, scored on the answer alone; step metrics cover "
                  "the rest): " + "; ".join(f"{n} ({m.get('steps_checkable_problems', 0)} of {m.get('n')} problems "
                                            "checkable)" for n, m in unchecked.items())]
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    too_long = {name: info["too_long"] for name, info in (report.get("sources") or {}).items() if info.get("too_long")}
    if too_long:
        lines += ["", "Too long for the model's context, not evaluated: "
                  + "; ".join(f"{name} {n} problem(s)" for name, n in too_long.items())]
    lines.append("")
    rl_block = report.get("rl") or {}
    lines.append(f"in-distribution accuracy {report.get('accuracy')}, out-of-distribution {report.get('ood_accuracy')}"
                 + (f"; SFT+RL {rl_block.get('accuracy')} / {rl_block.get('ood_accuracy')}" if rl_block else "")
                 + (f"; direct baseline {direct.get('accuracy')} / {direct.get('ood_accuracy')}" if direct else ""))
    return "\n".join(lines) + "\n"


def ladder_table(ladder: dict) -> list[str]:
    """The length ladder: accuracy of every model at every n_steps (lengths past the longest
    trained chain in bold)."""
    models = ladder.get("models") or {}
    if not models:
        return []
    trained = ladder.get("trained_steps")
    lines = ["", f"Length ladder: {ladder.get('n_per_steps')} fresh {ladder.get('family')} problems per n_steps "
             f"(greedy), none a training question; trained on chains of up to {trained} steps, longer ones in bold.", "",
             "| n_steps | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for k in sorted({int(k) for by_steps in models.values() for k in by_steps}):
        label = f"**{k}**" if trained is not None and k > trained else str(k)
        lines.append(f"| {label} | " + " | ".join(_ci(by_steps.get(str(k), {}), "accuracy") for by_steps in models.values())
                     + " |")
    return lines


def curriculum_table(curriculum: dict) -> list[str]:
    """RL's length curriculum (rl.curriculum): where it started and ended, and every move."""
    if not curriculum:
        return []
    lines = ["", f"RL length curriculum: lengths {curriculum.get('start')} -> {curriculum.get('range')} (max "
             f"{curriculum.get('max')}); the range moves up when greedy accuracy at its longest length (the frontier) "
             f"reaches {curriculum.get('grow_when')}.", ""]
    moves = curriculum.get("moves") or []
    if not moves:
        return lines + ["The frontier never reached it: no move."]
    lines += ["| after round | from | to | frontier probe accuracy |", "|---|---|---|---|"]
    lines += [f"| {m['round']} | {m['from']} | {m['to']} | {m['probe_accuracy']:.3f} |" for m in moves]
    return lines


def _searched(splits: dict) -> bool:
    return any("steps_retried_per_problem" in m for m in splits.values())


def _search_settings(report: dict) -> str:
    s = (report.get("config") or {}).get("search") or {}
    keys = {"majority": ("k", "temperature"), "best_of_n": ("n", "temperature"),
            "step_retry": ("propose", "retries", "candidates", "backup", "on_fail", "retry_budget", "temperature"),
            "step_beam": ("width", "expand", "temperature")}.get(report.get("search"), ())
    return ", ".join(f"{k} {s[k]}" for k in keys if k in s)


def _tokens(m: dict) -> str:
    """Tokens generated per problem, with its interval."""
    v, ci = m.get("tokens_per_problem"), m.get("tokens_per_problem_ci")
    if v is None:
        return ""
    return f"{v:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci and None not in ci else f"{v:.1f}"


def _ci(m: dict, key: str) -> str:
    v, ci = m.get(key), m.get(f"{key}_ci")
    if v is None:
        return ""
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else f"{v:.3f}"
