"""Running an eval: (problem, sample) jobs, batches through the engine, and resume files.

Every (problem, sample) is a Job with its prompt, its token budget (the suite's max_new_tokens,
else sized from the question: example.answer_budget, never from the gold solution) and its own
sampling seed. A sample that used its whole budget is recorded `truncated`. Jobs are sorted by
prompt length (then budget) and cut into batches that are the same for any process count, by the
engine's `plan_batches`; under `accelerate launch` each process takes the batches the engine deals
it, so the outputs are the same as in one process. Finished samples are appended per batch to
samples.partial.rank<r>.jsonl; `prepare_partial` / `read_partial` let an interrupted run continue
from them when its settings (`run_id`) are unchanged.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import time
from dataclasses import dataclass

from accelerate import PartialState

from reasonlm import search
from reasonlm.answer import cut_at_stop, prompt_messages, render_prompt
from reasonlm.config import EvalConfig
from reasonlm.engine import SamplingParams, engine_for, plan_batches
from reasonlm.evaluate.errors import EvalError
from reasonlm.evaluate.scoring import score
from reasonlm.example import Example, answer_budget, render_target
from reasonlm.model import resolve_device
from reasonlm.outputs import atomic_write
from reasonlm.sources import Source, task_for
from reasonlm.stats import draw_seed


@dataclass
class Job:
    """One (problem, sample) to generate."""
    source: Source
    example: Example
    sample: int
    prompt: str
    ids: list
    budget: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.source.name}/{self.example.id}#{self.sample}"


def plan_jobs(sources: list[Source], tokenizer, cfg: EvalConfig, fmt: str, context: int | None = None) -> list[Job]:
    """Every (problem, sample) to generate. With the model's `context` known, a prompt that leaves
    no room for one new token is skipped and counted in its source's info["too_long"] (or, with
    eval.too_long=error, stops the run), and budgets are cut to the room that is left."""
    jobs = []
    for source in sources:
        too_long = 0
        for example in source.examples:
            text, ids = build_prompt(tokenizer, example.question, cfg.prompt, cfg.system, source.exemplars, fmt)
            if context and len(ids) + 1 > context:
                if cfg.too_long == "error":
                    raise EvalError(f"source {source.name!r}, problem {example.id!r}: the prompt is {len(ids)} tokens "
                                    f"but the model's context is {context} (eval.too_long=skip skips such problems)")
                too_long += 1
                continue
            budget = answer_budget(tokenizer, example.question, len(ids), context, cfg.max_new_tokens)
            for s in range(cfg.samples):
                key = f"{source.name}/{example.id}#{s}"
                jobs.append(Job(source, example, s, text, ids, budget, draw_seed(cfg.seed, key)))
        if context:
            source.info["too_long"] = too_long
    if context and not jobs:
        raise EvalError(f"nothing to evaluate: every prompt is longer than the model's context ({context} tokens)")
    return jobs


def build_prompt(tokenizer, question: str, style: str = "chat", system: str = "", exemplars=(),
                 fmt: str = "cot") -> tuple[str, list[int]]:
    """(prompt text, token ids). 'chat': the chat template, exemplars as earlier turns (exactly
    what training used when there are none); 'plain': 'Question: ...\\nAnswer: ...' blocks."""
    shots = [(ex.question, render_target(ex, fmt)) for ex in exemplars]
    if style == "chat":
        history = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        text = render_prompt(tokenizer, prompt_messages(question, system or None, history))
        return text, tokenizer(text, add_special_tokens=False)["input_ids"]
    text = (f"{system}\n\n" if system else "") + "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    text += f"Question: {question}\nAnswer:"
    return text, tokenizer(text)["input_ids"]


def make_batches(jobs: list[Job], batch_size: int, rank: int = 0, world: int = 1) -> list[list[Job]]:
    """The jobs' batches (engine.plan_batches: sorted by prompt length, then budget; the same for
    any process count), those dealt to process `rank` of `world`."""
    return [[jobs[i] for i in idx]
            for idx in plan_batches([j.ids for j in jobs], [j.budget for j in jobs], batch_size, rank, world)]


def stop_strings_for(cfg: EvalConfig) -> list[str]:
    return list(dict.fromkeys([*cfg.stop_strings, *(["Question:"] if cfg.prompt == "plain" else [])]))


def search_checker(source: Source, example: Example):
    """The checker a search gets for a problem: built from the question (and meta) only."""
    task = source.task or task_for(example.family)
    return search.checker_for(task, search.strip_gold(example), task.gold_free(example))


def check_search_sources(sources: list[Source], cfg: EvalConfig) -> None:
    """A search method that checks steps needs every problem to be checkable without the gold
    (search.check_methods)."""
    method = cfg.search.method
    if method in search.methods_for(None):  # every problem allows it: no need to look at them
        return
    answer_only = next((f"source {source.name!r} (task {task.name}, problem {example.id!r})"
                        for source in sources for example in source.examples
                        for task in [source.task or task_for(example.family)] if task.gold_free(example) == "answer"),
                       None)
    try:
        search.check_methods(method, answer_only, "eval.search.method")
    except ValueError as e:
        raise EvalError(str(e)) from None


def run_batch(model, tokenizer, batch: list[Job], cfg: EvalConfig) -> list[dict]:
    """Generate and score one batch of jobs; one sample record per job."""
    stops = stop_strings_for(cfg)
    engine = engine_for(model, tokenizer)
    found = None
    if cfg.search.method == "greedy":  # today's decoding: greedy, or `samples` at `temperature`
        params = SamplingParams(max_new_tokens=[j.budget for j in batch], temperature=cfg.temperature, top_p=cfg.top_p,
                                seeds=[j.seed for j in batch], stop_strings=tuple(stops), batch_size=len(batch))
        outputs = engine.generate([j.ids for j in batch], params)
    else:
        t0 = time.perf_counter()
        problems = [search.Problem(j.ids, j.budget, j.seed, search_checker(j.source, j.example)) for j in batch]
        found = search.run(engine, problems, cfg.search, batch_size=len(batch), top_p=cfg.top_p,
                           stop_strings=tuple(stops))
        seconds = (time.perf_counter() - t0) / len(batch)
        outputs = [o.tokens for o in found]
    samples = []
    for n, (job, out) in enumerate(zip(batch, outputs)):
        decoded = tokenizer.decode(out, skip_special_tokens=True)
        text = cut_at_stop(decoded, stops)
        # the engine leaves the stop token out: a row that ended on one is shorter than its budget
        truncated = len(out) >= job.budget and text == decoded
        ex = job.example
        samples.append({"split": job.source.name, "id": ex.id, "sample": job.sample, "n_steps": ex.n_steps,
                        "family": ex.family, "question": ex.question, "gold": ex.answer, "prompt": job.prompt,
                        "output": text, "tokens": len(out), "budget": job.budget, "truncated": truncated,
                        **score(ex, text, job.source.task, job.source.lmeval)})
        if found is not None:
            o = found[n]
            samples[-1].update(search=cfg.search.method, generated_tokens=o.generated, steps_retried=o.retried,
                               gave_up=o.gave_up, search_samples=o.samples, rejected_steps=[dataclasses.asdict(r) for r in o.rejected],
                               search_seconds=round(seconds, 4))
    return samples


def process_state(device: str = "auto") -> PartialState:
    """The process group on `device` (the recipe's; 'auto': GPU, else MPS, else CPU): accelerate
    forms a multi-process CPU group (gloo) only when asked for the CPU explicitly, so ask for it
    there. The first call fixes the device for the process (PartialState is shared)."""
    return PartialState(cpu=resolve_device(device).type == "cpu")


def is_main_process() -> bool:
    return process_state().is_main_process


# --- resume ----------------------------------------------------------------------------------
def run_id(cfg: EvalConfig, model_name: str, adapter: str | None, fmt: str) -> dict:
    """What must match for finished samples to be reused (the sample count may grow)."""
    keys = ("prompt", "shots", "system", "temperature", "top_p", "seed", "max_new_tokens", "stop_strings")
    identity = {"model": model_name, "adapter": adapter, "format": fmt, **{k: getattr(cfg, k) for k in keys}}
    if cfg.search.method != "greedy":  # (greedy runs keep the identity they always had)
        identity["search"] = dataclasses.asdict(cfg.search)
    return identity


def partial_path(directory: str, rank: int) -> str:
    return os.path.join(directory, f"samples.partial.rank{rank}.jsonl")


def prepare_partial(directory: str, identity: dict, resume: bool) -> None:
    """Keep finished samples of the same run; set aside (never delete) those of another run."""
    os.makedirs(directory, exist_ok=True)
    meta = os.path.join(directory, "samples.partial.json")
    partials = glob.glob(os.path.join(directory, "samples.partial.rank*.jsonl"))
    same = False
    if os.path.exists(meta):
        try:
            with open(meta) as f:
                same = json.load(f) == json.loads(json.dumps(identity))
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
    atomic_write(meta, json.dumps(identity, indent=1))


def read_partial(directory: str, jobs: list[Job]) -> dict:
    """Finished samples by key, for the jobs of this run whose problem is unchanged; a torn last
    line (a killed process) is ignored."""
    wanted = {j.key: j.example for j in jobs}
    done = {}
    for path in sorted(glob.glob(os.path.join(directory, "samples.partial.rank*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                ex = wanted.get(rec.get("key")) if isinstance(rec, dict) else None
                if ex is not None and rec.get("question") == ex.question and rec.get("gold") == ex.answer:
                    done[rec.pop("key")] = rec
    return done


def remove_partial(directory: str) -> None:
    for path in glob.glob(os.path.join(directory, "samples.partial*")):
        os.remove(path)
