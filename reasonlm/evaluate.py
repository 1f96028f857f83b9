"""Eval stage: generate answers in batches, score final answers and every step, report.

    reasonlm eval recipes/tiny-cpu.yaml          -> <out_dir>/eval/{report.json, report.md, samples.jsonl}

Generation: prompts are sorted by length and run in batches with a KV cache; a finished
sequence (end-of-turn token or its own token budget) leaves the batch at once, so long
problems never keep short ones waiting. The budget per problem grows with its n_steps.

Scoring, per problem: the strict answer (the '#### N' line, via answer.parse_completion), the
flexible answer (last number), whether extraction failed, and the task checker's verdict on
every step: step accuracy, a fully valid chain, the first wrong step, and a right answer
reached through a wrong chain. Every headline metric carries a 95% bootstrap interval.
"""
from __future__ import annotations

import json
import os
import time
from collections import defaultdict

import torch

from reasonlm.answer import (answers_match, encode_prompt, end_of_turn, parse_completion, prompt_messages,
                             render_completion)
from reasonlm.config import EvalConfig, save_resolved
from reasonlm.tasks import get_task


class EvalError(ValueError):
    """An eval problem reported as one line."""


# --- generation ------------------------------------------------------------------------------
def stop_token_ids(tokenizer) -> set[int]:
    ids = {tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return {i for i in ids if isinstance(i, int) and i >= 0}


@torch.no_grad()
def generate(model, prompts: list[list[int]], max_new_tokens, stop_ids: set[int], pad_id: int,
             batch_size: int = 64, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             on_token=None) -> list[list[int]]:
    """Continue every prompt until a stop token or its budget; returns the new token ids.

    Greedy when temperature == 0. `max_new_tokens` is an int or one budget per prompt.
    `on_token(i, token_id)` (optional) is called as tokens arrive, for streaming.
    """
    from transformers import DynamicCache

    n = len(prompts)
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * n
    results: list[list[int]] = [[] for _ in range(n)]
    order = sorted(range(n), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    stop = torch.tensor(sorted(stop_ids), device=device) if stop_ids else None
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(idx), width), dtype=torch.long, device=device)
        for r, i in enumerate(idx):  # left padding keeps every prompt's last token at the end
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        alive = list(range(len(idx)))  # rows of the current batch -> positions in idx
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1]
        last_pos = positions[:, -1]
        steps = 0
        while alive:
            token = pick(logits, temperature, top_p, gen)
            steps += 1
            finished = []
            for r, t in enumerate(token.tolist()):
                i = idx[alive[r]]
                if stop is None or t not in stop_ids:
                    results[i].append(t)
                    if on_token:
                        on_token(i, t)
                done = (stop is not None and t in stop_ids) or steps >= budgets[i]
                finished.append(done)
            keep = [r for r, f in enumerate(finished) if not f]
            if not keep:
                break
            if len(keep) < len(alive):  # early exit: drop finished rows from the batch and cache
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                mask, token, last_pos = mask[sel], token[sel], last_pos[sel]
                alive = [alive[r] for r in keep]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                        past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]
    return results


def pick(logits, temperature: float, top_p: float, gen):
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, sorted_i, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def budget_for(tokenizer, row, fmt: str) -> int:
    """Token budget for one problem: twice its gold solution, so it grows with n_steps."""
    gold = render_completion(list(row["steps"]) if fmt == "cot" else [], row["answer"])
    return 2 * len(tokenizer(gold, add_special_tokens=False)["input_ids"]) + 8


# --- scoring ---------------------------------------------------------------------------------
_TASK_CACHE: dict = {}


def task_for(row):
    name = row.get("family", "arithmetic")
    if name not in _TASK_CACHE:
        _TASK_CACHE[name] = get_task(name)
    return _TASK_CACHE[name]


def score(row, output: str) -> dict:
    """Everything we measure about one generated solution."""
    parsed = parse_completion(output)
    example = {"question": row["question"], "answer": row["answer"], "steps": list(row["steps"]),
               "meta": json.loads(row.get("meta") or "{}")}
    check = task_for(row).check(example, parsed.steps, parsed.answer)
    return {
        "correct": answers_match(parsed.answer, row["answer"]),
        "flexible_correct": answers_match(parsed.flexible, row["answer"]),
        "extraction_failed": parsed.answer is None,
        "answer": parsed.answer,
        "steps_total": len(check.step_ok),
        "steps_ok": sum(check.step_ok),
        "chain_valid": check.chain_valid,
        "first_bad_step": check.first_bad_step,
        "right_answer_wrong_chain": check.right_answer_wrong_chain,
    }


def summarize(samples: list[dict]) -> dict:
    """Headline metrics with 95% bootstrap intervals, overall and per n_steps."""
    from reasonlm.stats import bootstrap_ci

    def block(rows):
        m = {"n": len(rows)}
        for key in ("correct", "flexible_correct", "extraction_failed", "chain_valid", "right_answer_wrong_chain"):
            point, lo, hi = bootstrap_ci([float(r[key]) for r in rows])
            name = "accuracy" if key == "correct" else key
            m[name] = round(point, 4)
            m[f"{name}_ci"] = [round(lo, 4), round(hi, 4)]
        steps_total = sum(r["steps_total"] for r in rows)
        m["step_accuracy"] = round(sum(r["steps_ok"] for r in rows) / steps_total, 4) if steps_total else None
        return m

    out = block(samples)
    by = defaultdict(list)
    for r in samples:
        by[r["n_steps"]].append(r)
    out["by_steps"] = {str(k): block(v) for k, v in sorted(by.items())}
    return out


# --- running an eval -------------------------------------------------------------------------
def evaluate_rows(model, tokenizer, rows, fmt: str = "cot", batch_size: int = 64, system: str = "",
                  max_new_tokens: int = 0) -> list[dict]:
    """Generate for every row and score it; one sample dict per row, in row order."""
    prompts = [encode_prompt(tokenizer, prompt_messages(r["question"], system or None)) for r in rows]
    budgets = [max_new_tokens or budget_for(tokenizer, r, fmt) for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    outputs = generate(model, prompts, budgets, stop_token_ids(tokenizer), pad, batch_size)
    samples = []
    for r, out in zip(rows, outputs):
        text = tokenizer.decode(out, skip_special_tokens=True)
        samples.append({"id": r["id"], "n_steps": int(r["n_steps"]), "family": r.get("family", ""),
                        "question": r["question"], "gold": r["answer"], "output": text, **score(r, text)})
    return samples


def quick_accuracy(model, tokenizer, rows, fmt: str = "cot") -> float:
    """Accuracy on a few rows; the training loop calls this for its periodic check."""
    was_training = model.training
    model.eval()
    samples = evaluate_rows(model, tokenizer, list(rows), fmt)
    if was_training:
        model.train()
    return round(sum(s["correct"] for s in samples) / max(1, len(samples)), 4)


def run(cfg: EvalConfig, out_dir: str, fmt: str = "cot", adapter: str | None = None, name: str = "eval",
        threads: int = 0) -> dict:
    """Evaluate one model on the configured splits; writes <out_dir>/<name>/ and returns the report."""
    from reasonlm import data as data_stage
    from reasonlm.model import load_for_inference
    from reasonlm.train import set_threads

    set_threads(threads)
    model_name = cfg.model or os.path.join(out_dir, "base")
    if adapter is None:
        adapter = cfg.adapter or os.path.join(out_dir, "train", "adapter")
    adapter = None if adapter == "none" else adapter
    dataset = data_stage.load(cfg.data or os.path.join(out_dir, "data"))
    model, tokenizer = load_for_inference(model_name, adapter)
    report = {"model": model_name, "adapter": adapter, "format": fmt, "splits": {}}
    all_samples = []
    t0 = time.time()
    for split in cfg.splits:
        if split not in dataset:
            raise EvalError(f"split {split!r} not in dataset (has: {', '.join(dataset)})")
        rows = list(dataset[split])
        if cfg.max_problems:
            rows = rows[:cfg.max_problems]
        if not rows:
            raise EvalError(f"split {split!r} is empty")
        samples = evaluate_rows(model, tokenizer, rows, fmt, cfg.batch_size, cfg.system, cfg.max_new_tokens)
        for s in samples:
            s["split"] = split
        all_samples += samples
        report["splits"][split] = summarize(samples)
    report["eval_seconds"] = round(time.time() - t0, 1)
    report["problems_per_s"] = round(len(all_samples) / max(report["eval_seconds"], 1e-9), 2)
    splits = report["splits"]
    report["accuracy"] = splits.get("test", {}).get("accuracy")
    report["ood_accuracy"] = splits.get("test_ood", {}).get("accuracy")
    report["by_steps"] = {k: v["accuracy"] for s in ("test", "test_ood") if s in splits
                          for k, v in splits[s]["by_steps"].items()}
    write_outputs(os.path.join(out_dir, name), report, all_samples, cfg)
    return report


def write_outputs(directory: str, report: dict, samples: list[dict], cfg) -> None:
    os.makedirs(directory, exist_ok=True)
    save_resolved(cfg, directory)
    _atomic_write(os.path.join(directory, "samples.jsonl"), "".join(json.dumps(s) + "\n" for s in samples))
    _atomic_write(os.path.join(directory, "report.json"), json.dumps(report, indent=1))
    _atomic_write(os.path.join(directory, "report.md"), markdown(report))


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def markdown(report: dict) -> str:
    """Accuracy per n_steps, CoT against the direct-answer baseline when the report has one."""
    direct = report.get("direct") or {}
    lines = ["| n_steps | split | CoT accuracy | direct accuracy | CoT step accuracy | CoT valid chains |",
             "|---|---|---|---|---|---|"]
    for split in ("test", "test_ood"):
        cot = report["splits"].get(split)
        if not cot:
            continue
        d = (direct.get("splits") or {}).get(split, {}).get("by_steps", {})
        for k, m in cot["by_steps"].items():
            dacc = d.get(k, {}).get("accuracy")
            lines.append(f"| {k} | {split} | {m['accuracy']:.2f} [{m['accuracy_ci'][0]:.2f}, {m['accuracy_ci'][1]:.2f}] "
                         f"| {'' if dacc is None else f'{dacc:.2f}'} | {m['step_accuracy'] if m['step_accuracy'] is not None else ''} "
                         f"| {m['chain_valid']:.2f} |")
    lines.append("")
    lines.append(f"in-distribution accuracy {report.get('accuracy')}, out-of-distribution {report.get('ood_accuracy')}"
                 + (f"; direct baseline {direct.get('accuracy')} / {direct.get('ood_accuracy')}" if direct else ""))
    return "\n".join(lines) + "\n"
