"""Eval stage: generate answers in batches, score final answers and every step, report.

    reasonlm eval recipes/tiny-cpu.yaml                    the recipe's test splits -> <out_dir>/eval/
    reasonlm eval eval/ood.yaml --recipe recipes/tiny-cpu.yaml        a suite, with the recipe's model
    reasonlm eval eval/gsm8k-sample.yaml --model DIR [--adapter DIR] [--out DIR] [key=value ...]
    accelerate launch --multi_gpu --num_processes 2 -m reasonlm eval SUITE.yaml ... sharded over 2 processes
                      (also on a CPU-only machine: accelerate's `--cpu` launcher starts one process unless
                      MPI is set up; the torchrun launcher behind --multi_gpu starts them, gloo on CPU)
    torchrun --nproc_per_node 2 -m reasonlm eval SUITE.yaml ...                 the same (torchrun directly)
    reasonlm eval SUITE.yaml ... --baseline eval/baselines/NAME.json               CI gate
    reasonlm eval compare A/report.json B/report.json                 paired difference and tests

A run writes report.json (config, model, adapter, dataset fingerprint, every metric with its
95% interval, per-problem correctness), report.md, samples.jsonl (prompt, output, extracted
answers, verdicts) and accuracy_by_steps.png.

Problems come from *sources* (the recipe's dataset splits by default; a suite YAML can name
dataset splits, generated task families, GSM8K-format files and reasoning-gym tasks), each one
section of the report, and are prompted zero- or k-shot, with the chat template or plain text.

Generation: the (problem, sample) jobs are sorted by prompt length and cut into batches that run
with a KV cache; a finished sequence (end-of-turn token, a stop string, or its own token budget,
which grows with the problem's n_steps) leaves the batch at once. Under `accelerate launch` each
process takes every world_size-th batch, so the batches, and thus the outputs, are the same as in
one process; results are gathered on the main process. Every (problem, sample) samples from its
own seeded stream. Finished samples are appended per batch to samples.partial.rank<r>.jsonl, and
an interrupted run continues from them.

Scoring, per sample: the strict answer (the '#### N' line), the flexible one (last number), an
extraction failure when there is no final-answer line, the task checker's verdict on every step
(step accuracy, a fully valid chain, the position of the first wrong step, a right answer reached
through a wrong chain), and for GSM8K-format sources lm-evaluation-harness's strict-match and
flexible-extract. Every metric is reported overall, per source, per n_steps and per task family,
with counts and a bootstrap interval over problems; with samples > 1 also pass@k and maj@k.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import random
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from reasonlm.answer import (answers_match, end_of_turn, format_number, lmeval_flexible, lmeval_normalize,
                             lmeval_strict, normalize_number, parse_completion, prompt_messages, render_completion,
                             render_prompt)
from reasonlm.config import ConfigError, EvalConfig, build, save_resolved
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
             on_token=None, stop_strings=(), decode=None, seeds: list[int] | None = None) -> list[list[int]]:
    """Continue every prompt until a stop token, a stop string or its budget; returns the new ids.

    Greedy when temperature == 0. `max_new_tokens` is an int or one budget per prompt.
    `stop_strings` need `decode` (token ids -> text): a row stops once the decoded tail of its
    output contains one; the string's tokens stay in the output (cut the text, see `cut_at_stop`).
    `seeds` (one per prompt) gives every row its own sampling stream, so a row's sample does not
    depend on which rows share its batch; otherwise one stream seeded with `seed` is shared.
    `on_token(i, token_id)` (optional) is called as tokens arrive, for streaming.
    """
    from transformers import DynamicCache

    n = len(prompts)
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * n
    stop_strings = [s for s in stop_strings if s]
    if stop_strings and decode is None:
        raise ValueError("stop_strings need decode= (e.g. tokenizer.decode)")
    window = 4 * max(map(len, stop_strings)) + 4 if stop_strings else 0  # tokens that can hold a stop string
    results: list[list[int]] = [[] for _ in range(n)]
    order = sorted(range(n), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    shared = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        gens = ([torch.Generator().manual_seed(seeds[i]) for i in idx]
                if seeds is not None and temperature > 0 else shared)
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(idx), width), dtype=torch.long, device=device)
        for r, i in enumerate(idx):  # left padding keeps every prompt's last token at the end
            ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        alive = list(range(len(idx)))  # rows of the current batch -> positions in idx
        # logits_to_keep=1: only the last position's logits (a 150k vocab x long prompts is GBs otherwise)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                    logits_to_keep=1)
        logits = out.logits[:, -1]
        last_pos = positions[:, -1]
        steps = 0
        while alive:
            token = pick(logits, temperature, top_p, gens)
            steps += 1
            keep = []
            for r, t in enumerate(token.tolist()):
                i = idx[alive[r]]
                done = t in stop_ids
                if not done:
                    results[i].append(t)
                    if on_token:
                        on_token(i, t)
                    if stop_strings:
                        tail = decode(results[i][-window:])
                        done = any(s in tail for s in stop_strings)
                if not (done or steps >= budgets[i]):
                    keep.append(r)
            if not keep:
                break
            if len(keep) < len(alive):  # early exit: drop finished rows from the batch and cache
                sel = torch.tensor(keep, device=device)
                cache.batch_select_indices(sel)
                mask, token, last_pos = mask[sel], token[sel], last_pos[sel]
                alive = [alive[r] for r in keep]
                if isinstance(gens, list):
                    gens = [gens[r] for r in keep]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=device)], dim=1)
            last_pos = last_pos + 1
            out = model(input_ids=token[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                        past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]
    return results


def pick(logits, temperature: float, top_p: float, gen):
    """Next token per row: argmax, or a (nucleus) sample from one shared generator or one per row."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, sorted_i = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, sorted_i, sorted_p)
    if isinstance(gen, list):
        return torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(gen)])
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def cut_at_stop(text: str, stop_strings) -> str:
    """The text before the first stop string (HF-style outputs keep it; scoring must not)."""
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return text[:min(cuts)] if cuts else text


def budget_for(tokenizer, row, fmt: str, scale: float = 2.0) -> int:
    """Token budget for one problem: `scale` x its gold solution, so it grows with n_steps."""
    gold = render_completion(list(row["steps"]) if fmt == "cot" else [], row["answer"])
    return int(scale * len(tokenizer(gold, add_special_tokens=False)["input_ids"])) + 8


# --- problems: sources, exemplars, prompts ---------------------------------------------------
SOURCE_KINDS = ("dataset", "jsonl", "task", "gsm8k", "reasoning_gym")
SOURCE_OPTIONS = {"name", "split", "args", "steps", "n_per_steps", "size", "config", "max_problems",
                  "exclude_from", "lmeval"}
TRAINING_SPLITS = ("base", "train", "validation")


@dataclass
class Part:
    """One source of problems: a section of the report."""
    name: str
    kind: str
    rows: list
    exemplars: list = field(default_factory=list)
    task: object = None  # checker for every row; None = the task family named by each row
    lmeval: bool = False  # also score lm-evaluation-harness's gsm8k extraction
    info: dict = field(default_factory=dict)


def _row(ex: dict, rid: str, family: str) -> dict:
    meta = ex.get("meta") or {}
    return {"id": str(ex.get("id") or rid), "family": ex.get("family") or family, "question": str(ex["question"]),
            "steps": [str(s) for s in ex.get("steps") or []], "answer": str(ex["answer"]),
            "n_steps": int(ex.get("n_steps") or 0), "meta": meta if isinstance(meta, str) else json.dumps(meta, sort_keys=True)}


def _path(p: str, out_dir: str | None) -> str:
    if "{out_dir}" in p:
        if not out_dir:
            raise EvalError(f"path {p!r} uses {{out_dir}}: pass --recipe RECIPE (whose out_dir fills it)")
        p = p.replace("{out_dir}", out_dir)
    return p


def _load_dataset(path: str):
    from reasonlm import data as data_stage
    return data_stage.load(path)


def _training_questions(path: str) -> set[str]:
    from reasonlm.data import normalize_question
    dd = _load_dataset(path)
    return {normalize_question(r["question"]) for s in TRAINING_SPLITS if s in dd for r in dd[s]}


def default_sources(cfg: EvalConfig, out_dir: str | None) -> list[dict]:
    """No `sources`: the recipe's dataset splits, each a section named after its split."""
    data_dir = cfg.data or (os.path.join(out_dir, "data") if out_dir else "")
    if not data_dir:
        raise EvalError("nothing to evaluate: name `sources` in the suite, or `data`")
    return [{"dataset": data_dir, "split": s, "name": s} for s in cfg.splits]


def load_parts(cfg: EvalConfig, out_dir: str | None = None) -> tuple[list[Part], dict[str, str]]:
    """Every source's problems and exemplars, checked before anything is generated.

    Returns (parts, skipped) where skipped maps a source name to why it was left out (an
    optional dependency that is not installed). Bad sources raise EvalError naming the source.
    """
    specs = cfg.sources or default_sources(cfg, out_dir)
    parts, skipped, names = [], {}, set()
    for n, spec in enumerate(specs):
        if not isinstance(spec, dict):
            raise EvalError(f"sources[{n}]: expected a mapping like {{task: arithmetic}}, got {spec!r}")
        kinds = [k for k in SOURCE_KINDS if k in spec]
        if len(kinds) != 1:
            raise EvalError(f"sources[{n}]: name exactly one of {', '.join(SOURCE_KINDS)}, got {sorted(spec)}")
        unknown = set(spec) - SOURCE_OPTIONS - set(SOURCE_KINDS)
        if unknown:
            raise EvalError(f"sources[{n}]: unknown key(s) {sorted(unknown)}; valid: "
                            f"{', '.join(sorted(SOURCE_OPTIONS | set(SOURCE_KINDS)))}")
        kind = kinds[0]
        name = str(spec.get("name") or (spec.get("split") if kind == "dataset" else None)
                   or os.path.splitext(os.path.basename(str(spec[kind])))[0])
        if name in names:
            raise EvalError(f"sources[{n}]: two sources are named {name!r}; give one a `name`")
        names.add(name)
        if "/" in name:
            raise EvalError(f"sources[{n}]: a source name cannot contain '/', got {name!r}")
        try:
            part = _load_part(kind, name, spec, cfg, out_dir)
            cap = int(spec.get("max_problems", cfg.max_problems) or 0)
        except EvalError:
            raise
        except (ValueError, TypeError, KeyError) as e:  # bad settings or records, as one line
            raise EvalError(f"source {name!r}: {type(e).__name__ + ': ' if not isinstance(e, ValueError) else ''}"
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
        if part is None:
            skipped[name] = "reasoning-gym is not installed (pip install 'reasonlm[gym]')"
            continue
        if cap:
            part.rows = part.rows[:cap]
        if not part.rows:
            raise EvalError(f"source {name!r} has no problems to evaluate ({part.info.get('from', kind)})")
        if cfg.shots and len(part.exemplars) < cfg.shots:
            raise EvalError(f"source {name!r}: shots={cfg.shots} but only {len(part.exemplars)} exemplars are available")
        if part.task is None:
            for family in sorted({r["family"] for r in part.rows}):
                try:
                    task_for({"family": family})
                except ValueError as e:
                    raise EvalError(f"source {name!r}: {e}") from None
        part.info["problems"] = len(part.rows)
        part.info["fingerprint"] = fingerprint([part])
        parts.append(part)
    for name, why in skipped.items():
        print(f"warning: skipped source {name!r}: {why}", file=sys.stderr)
    if not parts:
        raise EvalError("no source could be evaluated" + (f" (skipped: {'; '.join(skipped.values())})" if skipped else ""))
    return parts, skipped


def _load_part(kind: str, name: str, spec: dict, cfg: EvalConfig, out_dir: str | None) -> Part | None:
    from reasonlm.data import normalize_question
    shots = cfg.shots
    exclude = _training_questions(_path(spec["exclude_from"], out_dir)) if spec.get("exclude_from") else set()
    info: dict = {"kind": kind}
    part = Part(name, kind, [], lmeval=bool(spec.get("lmeval", kind == "gsm8k")), info=info)
    if kind == "dataset":
        path, split = _path(str(spec["dataset"]), out_dir), str(spec.get("split", "test"))
        dd = _load_dataset(path)
        if split not in dd:
            raise EvalError(f"source {name!r}: split {split!r} not in {path} (has: {', '.join(dd)})")
        info["from"] = f"{path} split {split}"
        rows = [_row(r, f"{split}-{i:07d}", "arithmetic") for i, r in enumerate(dd[split])]
        if shots and "train" in dd and split != "train":  # exemplars from training problems
            taken = {normalize_question(r["question"]) for r in rows}
            part.exemplars = [_row(r, "", "") for r in dd["train"].select(range(min(len(dd["train"]), 4 * shots + 16)))
                              if normalize_question(r["question"]) not in taken][:shots]
            shots = 0
    elif kind == "jsonl":
        path = _path(str(spec["jsonl"]), out_dir)
        info["from"] = path
        rows = [_row(r, f"{name}-{i:07d}", "arithmetic") for i, r in enumerate(_read_jsonl(path))]
    elif kind == "task":
        task = get_task(str(spec["task"]), **(spec.get("args") or {}))
        bounds, per = spec.get("steps", [1, 4]), spec.get("n_per_steps", 20)
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int) for b in bounds)
                and 1 <= bounds[0] <= bounds[1] and isinstance(per, int) and per >= 1):
            raise EvalError(f"source {name!r}: needs steps: [lo, hi] with 1 <= lo <= hi and n_per_steps >= 1, "
                            f"got steps {bounds!r}, n_per_steps {per!r}")
        steps = list(range(bounds[0], bounds[1] + 1))
        info["from"] = f"task {spec['task']} {json.dumps(spec.get('args') or {})} steps {bounds}, seeds {cfg.seeds}"
        rows, taken = [], set(exclude)
        for seed in cfg.seeds:
            rows += generate_rows(task, f"{name}-s{seed}", random.Random(seed), [k for k in steps for _ in range(per)], taken)
        if shots:  # exemplars: a separate draw, distinct from every evaluated problem
            part.exemplars = generate_rows(task, f"{name}-shot", random.Random(10**6 + cfg.seeds[0]),
                                           [steps[i % len(steps)] for i in range(shots)], taken)
            shots = 0
        part.task = task
    elif kind == "gsm8k":
        path = _path(str(spec["gsm8k"]), out_dir)
        if not os.path.isfile(path):
            raise EvalError(f"source {name!r}: GSM8K-format file not found: {path}" + (
                " (write it with: python -c \"from reasonlm.tasks.gsm8k import write_fixture; "
                f"write_fixture('{path}')\")" if "fixtures" in path else ""))
        task = get_task("gsm8k", path=path)
        examples, load_report = task.load()
        info.update({"from": path, "load": load_report})
        rows = [_row(ex, f"line{(ex.get('meta') or {}).get('line', i)}", "gsm8k") for i, ex in enumerate(examples)]
        part.task = task
    else:  # reasoning_gym: an optional extra
        import importlib.util
        if importlib.util.find_spec("reasoning_gym") is None:
            return None
        from reasonlm.tasks.reasoning_gym import ReasoningGym
        rows, loads = [], {}
        for seed in cfg.seeds:
            task = ReasoningGym(str(spec["reasoning_gym"]), size=spec.get("size", 50), seed=seed,
                                config=spec.get("config") or None)
            examples, loads[str(seed)] = task.load()
            rows += [_row(ex, f"{name}-s{seed}-{i:05d}", "reasoning_gym") for i, ex in enumerate(examples)]
        info.update({"from": f"reasoning_gym {spec['reasoning_gym']} size {spec.get('size', 50)} seeds {cfg.seeds}",
                     "load": loads})
        part.task = task
    if exclude:
        before = len(rows)
        rows = [r for r in rows if normalize_question(r["question"]) not in exclude]
        info["decontaminated"] = before - len(rows)
    if shots:  # exemplars from the source itself: its first problems, then not evaluated
        part.exemplars, rows = rows[:shots], rows[shots:]
    seen = set()
    for r in rows:
        if r["id"] in seen:
            raise EvalError(f"source {name!r}: problem id {r['id']!r} appears twice")
        seen.add(r["id"])
    part.rows = rows
    return part


def generate_rows(task, prefix: str, rng: random.Random, targets: list[int], taken: set) -> list[dict]:
    """One distinct, checker-verified problem per n_steps in `targets`; `taken` (normalized
    questions) is avoided and extended."""
    from reasonlm.data import normalize_question
    rows, misses = [], 0
    for n_steps in targets:
        while True:
            ex = task.generate(rng, n_steps)
            key = normalize_question(ex["question"])
            if key not in taken:
                break
            misses += 1
            if misses > 50 * len(targets) + 1000:
                raise EvalError(f"{prefix}: too few distinct {n_steps}-step {task.name} problems (after excluding "
                                f"{len(taken)}); lower n_per_steps or widen the task's args")
        if not task.check(ex, ex["steps"], ex["answer"]).chain_valid:
            raise EvalError(f"task {task.name} produced a gold solution its own checker rejects: {ex['question']!r}")
        taken.add(key)
        rows.append(_row(ex, f"{prefix}-{len(rows):05d}", task.name))
    return rows


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise EvalError(f"file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}:{i}: not valid JSON ({e.msg})") from None
                if not isinstance(r, dict) or "question" not in r or "answer" not in r:
                    raise EvalError(f"{path}:{i}: a problem needs 'question' and 'answer'")
                rows.append(r)
    return rows


def fingerprint(parts: list[Part]) -> str:
    """Identity of the evaluated problems: source names, ids, questions and gold answers."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.name.encode() + b"\0")
        for r in p.rows:
            h.update(f"{r['id']}\0{r['question']}\0{r['answer']}\n".encode())
    return h.hexdigest()[:16]


def build_prompt(tokenizer, question: str, style: str = "chat", system: str = "", exemplars=(),
                 fmt: str = "cot") -> tuple[str, list[int]]:
    """(prompt text, token ids). 'chat': the chat template, exemplars as earlier turns (exactly
    what training used when there are none); 'plain': 'Question: ...\\nAnswer: ...' blocks."""
    shots = [(ex["question"], render_completion(list(ex["steps"]) if fmt == "cot" else [], ex["answer"]))
             for ex in exemplars]
    if style == "chat":
        history = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        text = render_prompt(tokenizer, prompt_messages(question, system or None, history))
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]
    text = (f"{system}\n\n" if system else "") + "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    text += f"Question: {question}\nAnswer:"
    return text, tokenizer(text)["input_ids"]


# --- scoring ---------------------------------------------------------------------------------
_TASK_CACHE: dict = {}


def task_for(row):
    name = row.get("family") or "arithmetic"
    if name not in _TASK_CACHE:
        _TASK_CACHE[name] = get_task(name)
    return _TASK_CACHE[name]


def score(row, output: str, task=None, lmeval: bool = False) -> dict:
    """Everything we measure about one generated solution. Never raises on model output: a
    checker that fails is recorded in `checker_error` and its steps count as unchecked."""
    output = output if isinstance(output, str) else ""
    parsed = parse_completion(output)
    gold = str(row["answer"])
    meta = row.get("meta") or "{}"
    example = {"question": row["question"], "answer": gold, "steps": list(row.get("steps") or []),
               "meta": json.loads(meta) if isinstance(meta, str) else meta}
    correct = answers_match(parsed.answer, gold)
    out = {"correct": correct, "flexible_correct": answers_match(parsed.flexible, gold),
           "extraction_failed": parsed.answer is None, "answer": parsed.answer, "flexible": parsed.flexible}
    try:
        check = (task or task_for(row)).check(example, parsed.steps, parsed.answer)
        out.update(steps_total=len(check.step_ok), steps_ok=sum(map(bool, check.step_ok)),
                   chain_valid=bool(check.chain_valid), first_bad_step=check.first_bad_step,
                   right_answer_wrong_chain=bool(check.right_answer_wrong_chain))
    except Exception as e:  # a checker bug must not end a long eval; it is counted and shown
        out.update(steps_total=0, steps_ok=0, chain_valid=False, first_bad_step=None,
                   right_answer_wrong_chain=correct, checker_error=f"{type(e).__name__}: {e}"[:200])
    if lmeval:
        strict, flexible = lmeval_strict(output), lmeval_flexible(output)
        out.update(lmeval_strict=strict, lmeval_flexible=flexible,
                   lmeval_strict_correct=lmeval_normalize(strict) == lmeval_normalize(gold),
                   lmeval_flexible_correct=lmeval_normalize(flexible) == lmeval_normalize(gold))
    return out


# --- metrics ---------------------------------------------------------------------------------
RATES = {"accuracy": "correct", "flexible_accuracy": "flexible_correct", "extraction_failed": "extraction_failed",
         "chain_valid": "chain_valid", "right_answer_wrong_chain": "right_answer_wrong_chain",
         "lmeval_strict_match": "lmeval_strict_correct", "lmeval_flexible_extract": "lmeval_flexible_correct"}
LOWER_IS_BETTER = {"extraction_failed", "right_answer_wrong_chain", "checker_errors"}


def _answer_key(answer: str):
    value = normalize_number(answer)
    return format_number(value) if value is not None else answer.strip().rstrip(".").casefold()


def default_ks(samples: int) -> list[int]:
    return [k for k in (2 ** i for i in range(1, 12)) if k <= samples]  # pass@1 = accuracy


def problem_table(samples: list[dict], ks=()) -> list[dict]:
    """One entry per problem: its samples' mean of every 0/1 metric, step counts, pass@k, maj@k."""
    from reasonlm.stats import maj_at_k, pass_at_k

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
             "checker_errors": sum(1 for s in group if s.get("checker_error")), "values": {}}
        for metric, key in RATES.items():
            if all(key in s for s in group):
                p["values"][metric] = sum(bool(s[key]) for s in group) / len(group)
        n, c = len(group), sum(bool(s["correct"]) for s in group)
        gold = first.get("gold", "")
        for k in ks:
            if k <= n:
                p["values"][f"pass@{k}"] = pass_at_k(n, c, k)
                p["values"][f"maj@{k}"] = maj_at_k([s.get("answer") for s in group], k,
                                                    lambda a, g=gold: answers_match(a, g), key=_answer_key)
        table.append(p)
    return table


def _ratio_ci(num, den, n_resamples: int = 1000, seed: int = 0):
    """sum(num) / sum(den) with a bootstrap interval over problems (for pooled step accuracy)."""
    import numpy as np
    num, den = np.asarray(num, float), np.asarray(den, float)
    if den.sum() == 0:
        return None, None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), (n_resamples, len(num)))
    d = den[idx].sum(1)
    boot = num[idx].sum(1)[d > 0] / d[d > 0]
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(num.sum() / den.sum()), float(lo), float(hi)


def block(problems: list[dict]) -> dict:
    """Every metric over a set of problems, with counts and 95% bootstrap intervals."""
    from reasonlm.stats import bootstrap_ci

    r4 = lambda x: None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 4)
    m: dict = {"n": len(problems), "n_samples": sum(p["samples"] for p in problems)}
    names = [k for k in problems[0]["values"] if all(k in p["values"] for p in problems)] if problems else []
    for name in names:
        point, lo, hi = bootstrap_ci([p["values"][name] for p in problems])
        m[name], m[f"{name}_ci"] = r4(point), [r4(lo), r4(hi)]
    m["extraction_failures"] = round(sum(p["values"].get("extraction_failed", 0) * p["samples"] for p in problems))
    m["right_answer_wrong_chain_count"] = round(sum(p["values"].get("right_answer_wrong_chain", 0) * p["samples"]
                                                    for p in problems))
    point, lo, hi = _ratio_ci([p["steps_ok"] for p in problems], [p["steps_total"] for p in problems])
    m["step_accuracy"], m["step_accuracy_ci"] = r4(point), [r4(lo), r4(hi)]
    m["steps_checked"] = sum(p["steps_total"] for p in problems)
    bad = [(pos, total) for p in problems for pos, total in p["first_bad"]]
    hist: dict = defaultdict(int)
    for pos, _ in bad:
        hist[str(pos)] += 1
    mean, lo, hi = bootstrap_ci([pos for pos, _ in bad]) if bad else (None, None, None)
    m["first_bad_step"] = {"n": len(bad), "mean": r4(mean), "mean_ci": [r4(lo), r4(hi)],
                           "relative_mean": r4(sum(pos / max(t, 1) for pos, t in bad) / len(bad)) if bad else None,
                           "hist": dict(sorted(hist.items(), key=lambda kv: int(kv[0])))}
    errors = sum(p["checker_errors"] for p in problems)
    if errors:
        m["checker_errors"] = errors
    return m


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


# --- running an eval -------------------------------------------------------------------------
@dataclass
class Job:
    """One (problem, sample) to generate."""
    part: Part
    row: dict
    sample: int
    prompt: str
    ids: list
    budget: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.part.name}/{self.row['id']}#{self.sample}"


def sample_seed(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:7], "big")


def plan_jobs(parts: list[Part], tokenizer, cfg: EvalConfig, fmt: str) -> list[Job]:
    jobs = []
    for part in parts:
        for row in part.rows:
            text, ids = build_prompt(tokenizer, row["question"], cfg.prompt, cfg.system, part.exemplars, fmt)
            budget = cfg.max_new_tokens or budget_for(tokenizer, row, fmt, cfg.budget_scale)
            for s in range(cfg.samples):
                job = Job(part, row, s, text, ids, budget, 0)
                job.seed = sample_seed(cfg.seed, job.key)
                jobs.append(job)
    return jobs


def make_batches(jobs: list[Job], batch_size: int) -> list[list[Job]]:
    """Jobs sorted by prompt length (then budget), cut into batches; the same for any process count."""
    order = sorted(range(len(jobs)), key=lambda i: (len(jobs[i].ids), jobs[i].budget, i))
    return [[jobs[i] for i in order[s:s + batch_size]] for s in range(0, len(order), max(1, batch_size))]


def stop_strings_for(cfg: EvalConfig) -> list[str]:
    return list(dict.fromkeys([*cfg.stop_strings, *(["Question:"] if cfg.prompt == "plain" else [])]))


def run_batch(model, tokenizer, batch: list[Job], cfg: EvalConfig) -> list[dict]:
    """Generate and score one batch of jobs; one sample record per job."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stops = stop_strings_for(cfg)
    outputs = generate(model, [j.ids for j in batch], [j.budget for j in batch], stop_token_ids(tokenizer), pad,
                       batch_size=len(batch), temperature=cfg.temperature, top_p=cfg.top_p,
                       seeds=[j.seed for j in batch], stop_strings=stops,
                       decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True))
    samples = []
    for job, out in zip(batch, outputs):
        text = cut_at_stop(tokenizer.decode(out, skip_special_tokens=True), stops)
        r = job.row
        samples.append({"split": job.part.name, "id": r["id"], "sample": job.sample, "n_steps": r["n_steps"],
                        "family": r["family"], "question": r["question"], "gold": r["answer"], "prompt": job.prompt,
                        "output": text, "tokens": len(out), **score(r, text, job.part.task, job.part.lmeval)})
    return samples


def evaluate_rows(model, tokenizer, rows, fmt: str = "cot", batch_size: int = 64, system: str = "",
                  max_new_tokens: int = 0, cfg: EvalConfig | None = None) -> list[dict]:
    """Generate for every row and score it (greedy, zero-shot chat unless `cfg` says otherwise);
    one sample dict per row and sample, in row order."""
    cfg = cfg or EvalConfig(batch_size=batch_size, system=system, max_new_tokens=max_new_tokens)
    part = Part("", "rows", [_row(r, f"r{i}", "arithmetic") for i, r in enumerate(rows)])
    jobs = plan_jobs([part], tokenizer, cfg, fmt)
    done = {}
    for batch in make_batches(jobs, cfg.batch_size):
        for job, s in zip(batch, run_batch(model, tokenizer, batch, cfg)):
            done[job.key] = s
    return [done[j.key] for j in jobs]


def quick_accuracy(model, tokenizer, rows, fmt: str = "cot") -> float:
    """Accuracy on a few rows; the training loop calls this for its periodic check."""
    was_training = model.training
    model.eval()
    samples = evaluate_rows(model, tokenizer, list(rows), fmt)
    if was_training:
        model.train()
    return round(sum(s["correct"] for s in samples) / max(1, len(samples)), 4)


def validate(cfg: EvalConfig) -> None:
    """Settings that would waste a run, as one-line errors before anything is loaded."""
    checks = [(cfg.prompt in ("chat", "plain"), f"prompt must be 'chat' or 'plain', got {cfg.prompt!r}"),
              (cfg.format in ("", "cot", "direct"), f"format must be 'cot' or 'direct', got {cfg.format!r}"),
              (cfg.samples >= 1, f"samples must be >= 1, got {cfg.samples}"),
              (cfg.shots >= 0, f"shots must be >= 0, got {cfg.shots}"),
              (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
              (cfg.temperature >= 0, f"temperature must be >= 0, got {cfg.temperature}"),
              (0 < cfg.top_p <= 1, f"top_p must be in (0, 1], got {cfg.top_p}"),
              (cfg.budget_scale > 0, f"budget_scale must be > 0, got {cfg.budget_scale}"),
              (bool(cfg.seeds) and all(isinstance(s, int) for s in cfg.seeds), f"seeds must be a list of integers, got {cfg.seeds!r}"),
              (all(isinstance(k, int) and 1 <= k <= cfg.samples for k in cfg.ks),
               f"every k in ks must be in 1..samples ({cfg.samples}), got {cfg.ks}"),
              (all(isinstance(s, str) and s for s in cfg.stop_strings), "stop_strings must be non-empty strings")]
    for ok, message in checks:
        if not ok:
            raise EvalError(message)
    if cfg.samples > 1 and cfg.temperature == 0:
        print("warning: samples > 1 with temperature 0: every sample is the same greedy output", file=sys.stderr)


def run(cfg: EvalConfig, out_dir: str | None, fmt: str = "cot", adapter: str | None = None, name: str = "eval",
        threads: int = 0, directory: str | None = None) -> dict:
    """Evaluate one model on the configured sources; writes <out_dir>/<name>/ (or `directory`)
    and returns the report. Under `accelerate launch` the batches are split over the processes
    and every process returns the full report; only the main process writes files."""
    from reasonlm.model import load_for_inference
    from reasonlm.train import set_threads

    validate(cfg)
    state = _state()
    set_threads(threads or int(os.environ.get("OMP_NUM_THREADS") or 0), state.num_processes)  # respect an explicit limit
    model_name = cfg.model or (os.path.join(out_dir, "base") if out_dir else "")
    if not model_name:
        raise EvalError("no model: pass --model (or --recipe)")
    if adapter is None:
        adapter = cfg.adapter or (os.path.join(out_dir, "train", "adapter") if out_dir else "none")
    adapter = None if adapter in ("none", "") else adapter
    directory = directory or os.path.join(out_dir or "out", name)
    fmt = cfg.format or fmt
    parts, skipped = load_parts(cfg, out_dir)
    model, tokenizer = load_for_inference(model_name, adapter)
    model = model.to(state.device)
    jobs = plan_jobs(parts, tokenizer, cfg, fmt)
    run_id = _run_id(cfg, model_name, adapter, fmt)

    if state.is_main_process:
        _prepare_partial(directory, run_id, cfg.resume)
    state.wait_for_everyone()
    done = _read_partial(directory, jobs)
    state.wait_for_everyone()  # everyone has read the finished samples before anyone appends
    todo = [j for j in jobs if j.key not in done]
    if state.is_main_process and done:
        print(f"eval: resuming {directory}: {len(done)} of {len(jobs)} samples already done")
    mine = make_batches(todo, cfg.batch_size)[state.process_index::state.num_processes]
    new: list[dict] = []
    t0 = time.time()
    partial = os.path.join(directory, f"samples.partial.rank{state.process_index}.jsonl")
    try:
        with open(partial, "a", encoding="utf-8") as f:
            for b, batch in enumerate(mine):
                records = run_batch(model, tokenizer, batch, cfg)
                for job, rec in zip(batch, records):
                    f.write(json.dumps({"key": job.key, **rec}) + "\n")
                f.flush()
                new += records
                if state.is_main_process and (b + 1) % max(1, len(mine) // 10) == 0:
                    print(f"eval: {len(new)}/{len(todo) // state.num_processes} samples "
                          f"({len(new) / max(time.time() - t0, 1e-9):.1f}/s)", flush=True)
    except BaseException:  # interrupted or crashed: say where the finished samples are
        print(f"\neval: stopped; {len(done) + len(new)} finished samples are kept in {directory}: "
              "run the same command again to continue", file=sys.stderr)
        raise
    seconds = time.time() - t0
    if state.num_processes > 1:
        from accelerate.utils import gather_object
        new = gather_object(new)
        seconds = max(gather_object([seconds]))
    by_key = {**done, **{f"{s['split']}/{s['id']}#{s['sample']}": s for s in new}}
    samples = [by_key[j.key] for j in jobs]
    report = build_report(cfg, parts, skipped, samples, model_name, adapter, fmt)
    report.update(eval_seconds=round(seconds, 1), processes=state.num_processes, resumed_samples=len(done),
                  problems_per_s=round(len(todo) / max(cfg.samples, 1) / max(seconds, 1e-9), 2))
    if state.is_main_process:
        write_outputs(directory, report, samples, cfg)
        for path in glob.glob(os.path.join(directory, "samples.partial*")):
            os.remove(path)
    state.wait_for_everyone()
    return report


def _state():
    """The process group: on a machine without a GPU, accelerate forms a multi-process CPU group
    (gloo) only when asked for the CPU explicitly, so ask for it there."""
    from accelerate import PartialState
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return _state().is_main_process


def _run_id(cfg: EvalConfig, model_name: str, adapter: str | None, fmt: str) -> dict:
    """What must match for finished samples to be reused (the sample count may grow)."""
    keys = ("prompt", "shots", "system", "temperature", "top_p", "seed", "max_new_tokens", "budget_scale", "stop_strings")
    return {"model": model_name, "adapter": adapter, "format": fmt, **{k: getattr(cfg, k) for k in keys}}


def _prepare_partial(directory: str, run_id: dict, resume: bool) -> None:
    """Keep finished samples of the same run; set aside (never delete) those of another run."""
    os.makedirs(directory, exist_ok=True)
    meta = os.path.join(directory, "samples.partial.json")
    partials = glob.glob(os.path.join(directory, "samples.partial.rank*.jsonl"))
    same = False
    if os.path.exists(meta):
        try:
            with open(meta) as f:
                same = json.load(f) == json.loads(json.dumps(run_id))
        except (OSError, ValueError):
            same = False
    if partials and not (same and resume):
        aside = os.path.join(directory, f"stale-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(aside, exist_ok=True)
        for p in partials:
            os.replace(p, os.path.join(aside, os.path.basename(p)))
        why = "resume is off" if same else "they come from different settings or another model"
        print(f"warning: {len(partials)} partial sample file(s) in {directory} not reused ({why}); moved to {aside}",
              file=sys.stderr)
    _atomic_write(meta, json.dumps(run_id, indent=1))


def _read_partial(directory: str, jobs: list[Job]) -> dict:
    """Finished samples by key, for the jobs of this run whose problem is unchanged; a torn last
    line (a killed process) is ignored."""
    wanted = {j.key: j.row for j in jobs}
    done = {}
    for path in sorted(glob.glob(os.path.join(directory, "samples.partial.rank*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                row = wanted.get(rec.get("key")) if isinstance(rec, dict) else None
                if row is not None and rec.get("question") == row["question"] and rec.get("gold") == row["answer"]:
                    done[rec.pop("key")] = rec
    return done


def build_report(cfg: EvalConfig, parts: list[Part], skipped: dict, samples: list[dict], model_name: str,
                 adapter: str | None, fmt: str) -> dict:
    import importlib.metadata as md

    ks = cfg.ks or (default_ks(cfg.samples) if cfg.samples > 1 else [])
    splits = {p.name: summarize([s for s in samples if s["split"] == p.name], ks) for p in parts}
    per_problem: dict = defaultdict(list)
    for s in samples:
        per_problem[f"{s['split']}/{s['id']}"].append(int(bool(s["correct"])))
    report = {
        "suite": cfg.name or "eval", "description": cfg.description, "model": model_name, "adapter": adapter,
        "format": fmt, "prompt": cfg.prompt, "shots": cfg.shots, "samples_per_problem": cfg.samples,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "ks": ks,
        "dataset_fingerprint": fingerprint(parts), "sources": {p.name: p.info for p in parts}, "skipped": skipped,
        "splits": splits, "overall": summarize(samples, ks) if len(parts) > 1 else splits[parts[0].name],
        "samples_path": "samples.jsonl", "per_problem": dict(per_problem),
        "config": dataclasses.asdict(cfg), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "versions": {p: _version(md, p) for p in ("reasonlm", "torch", "transformers", "peft")},
    }
    report["accuracy"] = splits.get("test", {}).get("accuracy") if "test" in splits else report["overall"]["accuracy"]
    report["ood_accuracy"] = splits.get("test_ood", {}).get("accuracy")
    legacy = [s for s in ("test", "test_ood") if s in splits]
    report["by_steps"] = ({k: v["accuracy"] for s in legacy for k, v in splits[s]["by_steps"].items()} if legacy
                          else {k: v["accuracy"] for k, v in report["overall"]["by_steps"].items()})
    return report


def _version(md, package: str) -> str | None:
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


# --- outputs ---------------------------------------------------------------------------------
def write_outputs(directory: str, report: dict, samples: list[dict], cfg) -> None:
    """report.json, report.md, samples.jsonl, config.yaml and accuracy_by_steps.png (atomically)."""
    os.makedirs(directory, exist_ok=True)
    save_resolved(cfg, directory)
    _atomic_write(os.path.join(directory, "samples.jsonl"), "".join(json.dumps(s) + "\n" for s in samples))
    _atomic_write(os.path.join(directory, "report.json"), json.dumps(report, indent=1))
    _atomic_write(os.path.join(directory, "report.md"), markdown(report))
    plot(report, os.path.join(directory, "accuracy_by_steps.png"))


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _band(m: dict) -> tuple:
    """(accuracy, lo, hi) of a bucket: the Wilson interval with one sample per problem (the
    bootstrap collapses to a point at 0% and 100%, common in small buckets), else the bootstrap."""
    from reasonlm.stats import wilson_interval
    n, ns = m.get("n"), m.get("n_samples")
    if n and (ns is None or ns == n):
        return wilson_interval(round(m["accuracy"] * n), n)
    return (m["accuracy"], *m["accuracy_ci"])


def plot(report: dict, path: str) -> str | None:
    """Accuracy vs n_steps with 95% bands, one line per source (and per direct-answer source)."""
    from reasonlm.stats import MissingDependencyError, plot_accuracy_by_steps

    series = {}
    for label, rep in (("", report), ("direct ", report.get("direct") or {})):
        for split, summary in (rep.get("splits") or {}).items():
            points = {int(k): _band(m) for k, m in summary.get("by_steps", {}).items()
                      if m.get("accuracy") is not None and None not in m.get("accuracy_ci", [None])}
            if points:
                series[f"{label}{split}"] = points
    if not series:
        return None
    try:
        return plot_accuracy_by_steps(series, path, title=f"{report.get('suite', 'eval')}: accuracy by n_steps")
    except MissingDependencyError as e:
        print(f"warning: no plot ({e})", file=sys.stderr)
        return None


def _ci(m: dict, key: str) -> str:
    v, ci = m.get(key), m.get(f"{key}_ci")
    if v is None:
        return ""
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else f"{v:.3f}"


HEADLINE = [("accuracy", "accuracy"), ("flexible_accuracy", "flexible"), ("extraction_failed", "no final answer"),
            ("step_accuracy", "step accuracy"), ("chain_valid", "valid chains"),
            ("right_answer_wrong_chain", "right answer, wrong chain")]


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
    lines += ["| source | problems | " + " | ".join(c for _, c in cols) + " | first bad step (mean) |",
              "|---" * (len(cols) + 3) + "|"]
    rows = list(splits.items()) + ([("overall", report["overall"])] if len(splits) > 1 and report.get("overall") else [])
    for name, m in rows:
        fb = (m.get("first_bad_step") or {}).get("mean")
        lines.append(f"| {name} | {m.get('n')} | " + " | ".join(_ci(m, k) for k, _ in cols) + f" | {'' if fb is None else fb} |")
    lines += ["", "| source | n_steps | problems | accuracy | " + ("direct accuracy | " if direct else "")
              + "step accuracy | valid chains | no final answer |", "|---" * (8 if direct else 7) + "|"]
    for name, m in splits.items():
        d = ((direct.get("splits") or {}).get(name) or {}).get("by_steps", {})
        for k, b in m.get("by_steps", {}).items():
            dacc = d.get(k, {}).get("accuracy")
            lines.append(f"| {name} | {k} | {b['n']} | {_ci(b, 'accuracy')} | "
                         + (f"{'' if dacc is None else f'{dacc:.3f}'} | " if direct else "")
                         + f"{_ci(b, 'step_accuracy')} | {_ci(b, 'chain_valid')} | {_ci(b, 'extraction_failed')} |")
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
    if report.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in report["skipped"].items())]
    lines.append("")
    lines.append(f"in-distribution accuracy {report.get('accuracy')}, out-of-distribution {report.get('ood_accuracy')}"
                 + (f"; direct baseline {direct.get('accuracy')} / {direct.get('ood_accuracy')}" if direct else ""))
    return "\n".join(lines) + "\n"


# --- suites ----------------------------------------------------------------------------------
RECIPE_KEYS = {"out_dir", "threads", "direct_baseline", "base", "train", "eval", "chat"}


def _read_yaml(path: str):
    import yaml
    if not os.path.isfile(path):
        raise EvalError(f"not found: {path}")
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise EvalError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def is_suite(path: str) -> bool:
    """A recipe has stage sections (or a data section); a suite is a flat eval section."""
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise EvalError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    return not (RECIPE_KEYS & set(raw) or isinstance(raw.get("data"), dict))


def load_suite(path: str, overrides=()) -> EvalConfig:
    """A suite YAML (the keys of a recipe's eval section) with `key=value` overrides."""
    import yaml
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise EvalError(f"{path}: a suite is a mapping of eval settings, got {type(raw).__name__}")
    for item in overrides:
        if "=" not in item:
            raise EvalError(f"override {item!r} is not key=value (e.g. samples=8)")
        key, value = item.split("=", 1)
        raw[key.removeprefix("eval.")] = yaml.safe_load(value) if value else ""
    try:
        cfg = build(EvalConfig, raw, "")
    except ConfigError as e:
        raise EvalError(f"{path}: {e}") from None
    if not cfg.name:
        cfg.name = os.path.splitext(os.path.basename(path))[0]
    return cfg


def run_suite(cfg: EvalConfig, model: str | None = None, adapter: str | None = None, recipe=None,
              out: str | None = None) -> tuple[dict, str]:
    """Run a suite; the model, adapter, format and output folder come from the arguments, then the
    suite, then the recipe's outputs. Returns (report, output directory)."""
    out_dir = recipe.out_dir if recipe is not None else None
    model = model or cfg.model or (os.path.join(out_dir, "base") if out_dir else "")
    if not model:
        raise EvalError(f"suite {cfg.name!r} needs a model: --model PATH_OR_HUB_ID (or --recipe RECIPE)")
    adapter = adapter or cfg.adapter or (os.path.join(out_dir, "train", "adapter") if out_dir else "none")
    if out is None:
        if out_dir:
            out = os.path.join(out_dir, f"eval-{cfg.name}")
        else:
            tag = re.sub(r"[^\w.-]+", "_", os.path.basename(os.path.normpath(adapter if adapter != "none" else model)))
            out = os.path.join("out", "eval", cfg.name, tag)
    fmt = cfg.format or (recipe.train.format if recipe is not None else "cot")
    cfg = dataclasses.replace(cfg, model=model, format=fmt)
    report = run(cfg, out_dir, fmt, adapter, threads=recipe.threads if recipe is not None else 0, directory=out)
    return report, out


# --- comparing two reports -------------------------------------------------------------------
def load_report(path: str) -> dict:
    if os.path.isdir(path):
        path = os.path.join(path, "report.json")
    try:
        with open(path) as f:
            report = json.load(f)
    except FileNotFoundError:
        raise EvalError(f"report not found: {path}") from None
    except (OSError, ValueError) as e:
        raise EvalError(f"{path} is not a JSON report ({e})") from None
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
    path = os.path.join(os.path.dirname(report["_path"]), report.get("samples_path") or "samples.jsonl")
    if not os.path.exists(path):
        raise EvalError(f"{report['_path']}: per-problem results not found ({path} is missing)")
    out: dict = defaultdict(list)
    with open(path) as f:
        for line in f:
            s = json.loads(line)
            if key not in s:
                raise EvalError(f"{path}: samples have no {key!r} (metric {metric!r} not measured for this source)")
            out[f"{s.get('split', '')}/{s['id']}"].append(int(bool(s[key])))
    return dict(out)


def compare(path_a: str, path_b: str, metric: str = "accuracy") -> dict:
    """B - A on the same problems: paired bootstrap interval and p, exact McNemar, per source and overall."""
    from reasonlm.stats import mcnemar, paired_bootstrap

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


# --- the CI gate -----------------------------------------------------------------------------
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
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise EvalError(f"baseline not found: {path}") from None
    except (OSError, ValueError) as e:
        raise EvalError(f"{path} is not a JSON baseline ({e})") from None
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
