"""RL stage: improve the SFT adapter on problems without gold solutions, scored by the task's checker.

    reasonlm rl recipes/tiny-cpu.yaml [rl.reward=outcome rl.rounds=40 ...]

Read top to bottom: the stage (`run`) -> the loop -> problems (a difficulty pool) -> rollouts ->
the update -> logs; the checker's verdict and the credit below are reasonlm/credit.py. No trainer classes. A round draws
`prompts_per_round` problems from the task's generator, or from an importer's records (rl.task
{name: gsm8k, args: {split: train}}: GSM8K train, those of rl.n_steps annotations), of which only
the question and the checker are used, never the gold steps; it samples `num_generations` completions of each with the engine that
eval and chat use, scores every completion with the task's checker, and updates the LoRA weights:

- algorithm grpo: the clipped policy gradient of GRPO with group-relative advantages (below),
  `num_iterations` shuffled passes over the round's rollouts in mini-batches of
  `mini_batch_size` drawn completions, one optimizer step each. The old log-probs are computed
  for every rollout before the first step, by the same model in the same precision, so the
  first step's ratio is exactly 1.
- algorithm expert_iteration (STaR / rejection-sampling fine-tuning): keep the completions the
  checker marks fully valid (every step and the answer), with `keep_valid_prefix` also the lines
  before the first wrong step of the others (trained without an answer line), and fine-tune on
  them with the SFT loss (mean log-likelihood of their tokens) in `mini_batch_size` batches.
  With `replay_sft: N`, N examples of SFT's own training data (the data stage's train split:
  gold chains SFT already fit, drawn afresh each round) join the kept samples. Trained on long
  chains alone the LoRA unlearns short ones (it ends a 2-step chain a step early); the replay
  costs no sampling. The RL problems themselves still have no gold solution in play.

Advantages (one group = the G completions of one problem):

  outcome  R[i] = 1 if completion i's final answer is right, else 0 (no answer line = 0, a
           truncated completion = -truncation_penalty). Every token of completion i gets
           R[i] - mean(R) (divided by std(R) + eps with scale_rewards).

  process  The parsed lines of a completion are steps 1..k, then the answer line.
           ok[i][j] = 1 if completion i's step j is right AND all its earlier steps are (the valid
                      prefix), else 0 (0 too when completion i has fewer than j steps)
           p[j]     = mean_i ok[i][j]             (how often the group gets through step j)
           Every token of step j of completion i gets ok[i][j] - p[j]: a right step the others
           got wrong earns a lot, a right step everyone gets earns ~0, and the first wrong step
           (and every later one) pays -p[j], so failing where the group usually succeeds costs
           the most. The answer line gets c[i] - mean(c), c[i] = 1 if the answer is right AND the
           chain valid AND the completion not truncated; tokens outside any step (the end-of-turn
           token, text after the answer line) take the answer line's. With scale_rewards every
           position's advantages are divided by their std over the group (+ eps).

  Worked example, G = 4 completions of a 3-step problem:
           steps       ok        c     step advantages           answer
      A    right x3    1 1 1     1     +.25  +.50  +.75          +.75
      B    R W R       1 0 0     0     +.25  -.50  -.25          -.25
      C    R R W       1 1 0     0     +.25  +.50  -.25          -.25
      D    W ...       0 0 0     0     -.75  -.50  -.25          -.25
      p                .75 .5 .25   mean(c) = .25
  B's third step is arithmetically right but follows a wrong one, so it is not in the valid
  prefix; D pays most for its first step, which three of four completions got right.

A group whose advantages are all 0 carries no signal (counted; `dynamic_sampling` replaces it).

Loss per completion token t of completion i, ratio r = exp(logp - logp_old), A its advantage:
  L = -min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A) + beta (exp(q) - q - 1), q = logp_ref - logp
reduced by loss_type: grpo = mean over each completion's tokens, then over completions;
dr_grpo = sum / (completions x max_completion_length); dapo = sum / all completion tokens.
The reference policy is the starting adapter (its weights are kept and swapped in to score).

The difficulty pool: problems no sample solved come back (up to `retries` times), problems every
sample solved retire, fresh problems fill the rest of a round, at n_steps drawn uniformly from
`n_steps`. Preflight: before the first round, the reward of gold solutions must be exactly 1 and
of corrupted ones (a wrong answer, no answer line; a wrong step: each step corrupted in turn, the
lowest reward counts) below 1, else the run stops.
Writes <out_dir>/rl/{adapter, metrics.jsonl, completions.jsonl, checkpoint-*, config.yaml}.

Several processes (rl.processes: N CPU processes the stage starts itself; or `accelerate launch
--num_processes N -m reasonlm rl ...`) share the work and end where one process would (with
lora_dropout 0, the default: dropout draws from each process's own generator):
each samples its share of the batches (the engine's `generate(..., rank, world)`; rows carry
their own seeds, so the samples are those of one process) and every process gathers and scores all of them, so the pool, the rollouts
and the logs are the same everywhere; in the update each runs every N-th rollout of a mini-batch
(`share`) and the gradients are summed before each step (`step`), equal to one process's up to the
order of float sums (tests/test_pipeline_rl.py, tests/test_rl.py).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

from reasonlm import outputs
from reasonlm.answer import encode_example, encode_prompt, end_of_turn, prompt_messages
from reasonlm.checkpoint import (check_resumable, keep_metrics_until, made_from, resume_or_start, save_checkpoint, save_weights,
                                 stop_if_diverged, trainable_state_dict)
from reasonlm.config import Recipe, RLConfig, RunPaths, base_model, save_resolved
from reasonlm.credit import Group, Rollout, assign_credit, has_signal, preflight, score
from reasonlm.engine import SamplingParams, engine_for
from reasonlm.example import Example, read_dataset, render_target
from reasonlm.model import check_adapter, load_adapter, resolve_device, set_threads
from reasonlm.packing import PackedRows, check_packable, packed_forward, use_packed_attention
from reasonlm.processes import cores_each, run_processes
from reasonlm.sources import ladder_problems, new_problem
from reasonlm.tasks import get_task, is_importer
from reasonlm.tracking import finish_tracking, start_tracking, tracked_accelerator


RL_FILES = ("config.yaml", "metrics.jsonl", "completions.jsonl", "rl_stats.json", "recipe.yaml")  # rl/'s own files


FRESH = "set rl.resume=never to start over (its checkpoints are then removed)"  # how to start an RL run over


class RLError(ValueError):
    """An RL problem reported as one line."""


# --- the stage -------------------------------------------------------------------------------
def run(recipe: Recipe) -> str:
    """RL from <out_dir>/train/adapter (or rl.adapter) on the recipe's base model (config.base_model,
    or rl.model), on recipe.device with recipe.threads threads, logging to the trackers of
    train.report_to; writes <out_dir>/rl/adapter and returns it."""
    from accelerate.utils import set_seed  # heavy (pulls in the distributed stack): only training stages pay for it

    cfg, paths = recipe.rl, RunPaths(recipe.out_dir)
    if cfg is None:
        raise RLError("the recipe has no rl: section")
    run_dir = paths.train_run("rl")
    # cpu=True on the CPU: processes started together then form a gloo group there (see train.run)
    accelerator = tracked_accelerator(recipe.train.report_to, run_dir, cpu=resolve_device(recipe.device).type == "cpu")
    name, knobs = problem_family(cfg, recipe)
    task = get_task(name, **knobs)
    records = imported_problems(task, cfg)
    if cfg.probe_every and records is not None:
        raise RLError("rl.probe_every needs a generated task family (an importer's problems have no held-out lengths)")
    preflight(task, cfg, records)
    base = base_model(recipe, cfg.model)
    adapter = cfg.adapter or paths.adapter("train")
    if not cfg.adapter and not os.path.isdir(adapter):
        raise RLError(f"no LoRA adapter at {adapter} (run `reasonlm train` first or set rl.adapter)")
    adapter = check_adapter(base, adapter)  # before any process starts or model loads
    # what the checkpoints record they were made from (the data only when replay_sft reads it)
    origin = made_from(dataclasses.replace(cfg, model=base), recipe.out_dir, {
        "base": base, "adapter": adapter, **({"data": recipe.train.data or paths.data} if cfg.replay_sft else {})})
    os.makedirs(run_dir, exist_ok=True)
    if cfg.processes > 1 and accelerator.num_processes == 1 and not torch.cuda.is_available():
        start_processes(recipe, run_dir, origin)
        return paths.adapter("rl")
    # one run per run directory (a second `reasonlm rl` on it stops in one line, as train's does);
    # a full disk anywhere in it is one line
    with outputs.lock(run_dir, enabled=accelerator.is_main_process), outputs.writing(run_dir):
        set_threads(recipe.threads, accelerator.num_processes)
        set_seed(cfg.seed)
        model, tokenizer = load_adapter(base, adapter, trainable=True, device=None)  # Accelerate places it
        if cfg.packed_attention:
            try:
                check_packable(model.config)
            except ValueError as e:
                raise RLError(f"rl.packed_attention: {e}") from None
            use_packed_attention(model)  # the update's forward only: sampling never passes packed rows
        if accelerator.is_main_process:  # the other processes write nothing but their checkpoint parts
            outputs.claim(run_dir, "rl", RL_FILES)  # a folder of the user's: stop before writing into it
            check_resumable(run_dir, origin, cfg.resume, FRESH)  # another run's checkpoints: the same
            save_resolved(cfg, run_dir)
        model, optimizer, reference = prepare(accelerator, model, cfg)
        start, state = resume_or_start(accelerator, model, run_dir, None, cfg.resume, origin, FRESH)  # no schedule
        if accelerator.is_main_process:  # rounds after the checkpoint are run again: logged once
            for log in ("metrics.jsonl", "completions.jsonl"):
                keep_metrics_until(os.path.join(run_dir, log), start, key="round")
        pool = ProblemPool(task, cfg, state.get("pool"), records)
        sft_rows = sft_train_rows(recipe.train.data or paths.data) if cfg.replay_sft else None
        start_tracking(accelerator, run_dir, cfg)
        try:
            stats = fit(model, tokenizer, pool, reference, cfg, run_dir, accelerator, optimizer, start,
                        state.get("history"), state.get("samples_total", 0), sft_rows, origin)
        finally:
            finish_tracking(accelerator)
        final = paths.adapter("rl")
        save_weights(accelerator, model, tokenizer, final, cfg, stage="rl", data_dir=paths.data)
        if accelerator.is_main_process:
            outputs.atomic_write(os.path.join(run_dir, "rl_stats.json"), json.dumps(stats, indent=1))
    accelerator.print(f"rl: wrote {final} ({stats['samples']} samples in {stats['seconds']}s, "
                      f"{accelerator.num_processes} process(es))")
    return final


def start_processes(recipe: Recipe, run_dir: str, origin: dict) -> None:
    """This stage as rl.processes CPU processes of one group, each with its share of the cores,
    on the resolved recipe (kept as <run_dir>/recipe.yaml); a failed process's exit code ends this one.
    `origin`: what the run's checkpoints record they were made from (check_resumable)."""
    n = recipe.rl.processes
    with outputs.lock(run_dir):  # a busy run directory stops here, before anything is written (the
        outputs.claim(run_dir, "rl", RL_FILES)  # processes' main one then holds the lock)
        check_resumable(run_dir, origin, recipe.rl.resume, FRESH)
        save_resolved(recipe, run_dir, "recipe.yaml")
    per_process = cores_each(n, recipe.threads)
    print(f"rl: starting {n} processes ({per_process} thread(s) each)", flush=True)
    code = run_processes(n, ["rl", os.path.join(run_dir, "recipe.yaml"), f"threads={per_process}"], per_process)
    if code:
        raise SystemExit(code)  # the process that failed said why


def prepare(accelerator, model, cfg: RLConfig):
    """(model, optimizer) prepared by Accelerate, and the starting weights (the KL's reference,
    kept before a checkpoint's weights are loaded over them)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    # checkpoints hold the trained weights and the optimizer state, not the frozen base
    accelerator.register_save_state_pre_hook(lambda models, weights, _: weights.__setitem__(
        slice(None), [trainable_state_dict(accelerator.unwrap_model(m)) for m in models]))
    net = accelerator.unwrap_model(model)
    return model, optimizer, {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}


def problem_family(cfg: RLConfig, recipe: Recipe) -> tuple[str, dict]:
    """(family name, knobs): rl.task (a generated family or an importer), else the recipe's first
    generated family."""
    spec = cfg.task or next((t for t in recipe.data.tasks if not is_importer(get_task(t["name"]))), None)
    if not spec:  # rl.task's shape is RLConfig's to check
        raise RLError("rl.task must name a task family, e.g. {name: arithmetic, args: {...}}, or an importer, "
                      "e.g. {name: gsm8k, args: {path: openai/gsm8k, split: train}}")
    return spec["name"], dict(spec.get("args") or {})


def imported_problems(task, cfg: RLConfig) -> list[Example] | None:
    """An importer's problems of rl.n_steps steps, and its answer-only ones (whose length is
    unknown; reward outcome only), or None for a generated family, which makes its own. A source
    with no problem of those lengths is one line, before any model is loaded."""
    lo, hi = cfg.n_steps
    if not is_importer(task):
        for n_steps in sorted({lo, hi}):  # a family that cannot make a length says so (ValueError)
            try:
                task.generate(random.Random(cfg.seed), n_steps)
            except ValueError as e:
                raise RLError(f"rl.task {task.name} makes no problems of {n_steps} steps (rl.n_steps {cfg.n_steps}): "
                              f"{str(e).splitlines()[0]}") from None
        return None
    examples, _ = task.load()
    records = [ex for ex in examples if not ex.steps or lo <= ex.n_steps <= hi]
    if not records:
        have = sorted({ex.n_steps for ex in examples})
        raise RLError(f"rl.task {task.name}: none of its {len(examples)} problems has {lo}-{hi} steps (rl.n_steps); "
                      + (f"they have {have[0]}-{have[-1]}" if have else "it loaded none"))
    return records


def sft_train_rows(data_dir: str):
    """The train split SFT fit (rl.replay_sft draws from it)."""
    rows = read_dataset(data_dir).get("train")
    if rows is None or len(rows) == 0:
        raise RLError("rl.replay_sft needs the SFT data's train split, and it has no examples")
    return rows


def sft_replay(rows, tokenizer, cfg: RLConfig, rnd: int) -> list[Rollout]:
    """Round rnd's cfg.replay_sft SFT training examples (a draw that depends on the seed and the
    round only, so a resumed run draws the same), as kept samples of their gold chains."""
    picks = random.Random(f"replay-sft-{cfg.seed}-{rnd}").sample(range(len(rows)), min(cfg.replay_sft, len(rows)))
    out = []
    for i in picks:
        prompt, completion = encode_example(tokenizer, rows[i]["question"], render_target(Example.from_row(rows[i]), "cot"))
        out.append(Rollout(prompt, completion, text="", truncated=False, ok=[], correct=True, valid=True, reward=1.0,
                           kept=[True] * len(completion)))
    return out


# --- the loop --------------------------------------------------------------------------------
def fit(model, tokenizer, pool, reference: dict, cfg: RLConfig, run_dir: str, accelerator, optimizer,
        start: int = 0, history: list | None = None, samples_done: int = 0, sft_rows=None, origin=None) -> dict:
    """`cfg.rounds` rounds of sample -> score -> update; metrics and completions go to run_dir;
    checkpoints record `origin` (checkpoint.made_from: what they were made from)."""
    # the update recomputes every log-prob: sampling needn't be bitwise the model's forward
    engine = engine_for(accelerator.unwrap_model(model), tokenizer, fold_lora=True)
    history = list(history or [])  # mean reward per round, for the flat-reward warning
    probe = probe_set(pool.task, tokenizer, cfg) if cfg.probe_every else None
    samples_total, t_start = samples_done, time.time()  # samples_total: since round 1, across resumes
    for rnd in range(start, cfg.rounds):
        t0, lr = time.time(), round_lr(cfg, rnd)
        for group in optimizer.param_groups:  # a function of the round alone: a resumed run steps alike
            group["lr"] = lr
        groups, seen, zero_first = collect(engine, tokenizer, pool, cfg, rnd, accelerator)
        t_sample = time.time() - t0
        if cfg.algorithm == "grpo":
            batch = [s for g in groups for s in g.rollouts if any(s.advantages)]
            update = grpo_update(model, optimizer, batch, reference, cfg, accelerator, seed=cfg.seed * 7919 + rnd)
        else:
            batch = [s for g in groups for s in g.rollouts if s.kept]
            batch += sft_replay(sft_rows, tokenizer, cfg, rnd) if cfg.replay_sft else []
            update = sft_update(model, optimizer, batch, cfg, accelerator, seed=cfg.seed * 7919 + rnd)
        samples = [s for g in seen for s in g.rollouts]
        drawn = len(samples)
        samples_total += drawn
        rewards = torch.tensor([s.reward for s in samples])
        new_tokens = sum(len(s.completion) for s in samples)
        record = {"round": rnd + 1, "samples": drawn, "reward_mean": round(rewards.mean().item(), 4),
                  "reward_std": round(rewards.std().item(), 4) if len(samples) > 1 else 0.0,
                  "accuracy": round(sum(s.correct for s in samples) / len(samples), 4),
                  "chain_valid": round(sum(s.valid for s in samples) / len(samples), 4),
                  "zero_signal_groups": round(zero_first, 4), "trained_sequences": len(batch),
                  "completion_length": round(new_tokens / len(samples), 1),
                  "truncated": round(sum(s.truncated for s in samples) / len(samples), 4),
                  **update, "tokens_per_s": round(new_tokens / max(t_sample, 1e-9), 1),
                  "samples_per_s": round(drawn / max(time.time() - t0, 1e-9), 2),
                  "sample_s": round(t_sample, 1), "update_s": round(time.time() - t0 - t_sample, 1)}
        record["samples_total"], record["lr"] = samples_total, lr
        if probe and (rnd + 1) % cfg.probe_every == 0:
            record["probe"] = run_probe(engine, tokenizer, pool.task, probe, cfg, accelerator)
        history.append(record["reward_mean"])
        if accelerator.is_main_process:  # every process holds the same rollouts and record
            warn_if_stuck(history, zero_first, cfg, rnd + 1)
            with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            with open(os.path.join(run_dir, "completions.jsonl"), "a") as f:
                for g in seen[:cfg.log_completions]:
                    f.write(json.dumps(completion_log(g, rnd + 1)) + "\n")
            print(" ".join(f"{k}={v}" for k, v in record.items()), flush=True)
        accelerator.log({k: v for k, v in record.items() if k != "round" and isinstance(v, (int, float))},
                        step=rnd + 1)  # the trackers of train.report_to (none: nothing)
        # every process holds the same loss (summed over them): all stop together, nothing saved
        stop_if_diverged(record["loss"], f"round {rnd + 1}", run_dir, "Lower rl.lr or check the adapter.",
                         [p for p in accelerator.unwrap_model(model).parameters() if p.requires_grad])
        done = rnd + 1
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.rounds:
            save_checkpoint(accelerator, run_dir, done, cfg.keep_last, None, {"pool": pool.state(), "history": history,
                                                                       "samples_total": samples_total,
                                                                       "made_from": origin})
    return {"rounds": cfg.rounds, "samples": samples_total, "seconds": round(time.time() - t_start, 1),
            "final_reward_mean": history[-1] if history else None}


def round_lr(cfg: RLConfig, rnd: int) -> float:
    """The learning rate of round rnd (from 0)."""
    return cfg.lr * (1 - rnd / cfg.rounds) if cfg.lr_scheduler_type == "linear" else cfg.lr


PROBE_SEED = 2_000_003  # rl.seed draws training problems (small integers); eval/bench_rl.py's ladder 1_000_003


def probe_set(task, tokenizer, cfg: RLConfig) -> list[tuple[Example, list[int]]]:
    """The fixed held-out (problem, prompt ids) of every probe length."""
    problems = ladder_problems(task, range(cfg.probe_steps[0], cfg.probe_steps[1] + 1), cfg.probe_problems,
                               PROBE_SEED, "probe")
    return [(ex, encode_prompt(tokenizer, prompt_messages(ex.question))) for ex in problems]


def run_probe(engine, tokenizer, task, probe, cfg: RLConfig, accelerator) -> dict:
    """{n_steps: greedy accuracy} of the policy now on the probe set."""
    outs = sample(engine, [p for _, p in probe], SamplingParams(max_new_tokens=cfg.max_completion_length,
                                                                batch_size=cfg.sample_batch_size), accelerator)
    right: dict = {}
    for (ex, _), ids in zip(probe, outs):
        verdict = score(task, ex, tokenizer.decode(ids), len(ids) >= cfg.max_completion_length)
        right.setdefault(str(ex.n_steps), []).append(verdict.correct)
    return {k: round(sum(v) / len(v), 4) for k, v in right.items()}


def warn_if_stuck(history: list, zero_signal: float, cfg: RLConfig, rnd: int) -> None:
    if zero_signal >= 1.0:
        print(f"warning: round {rnd}: every group carries no signal (all its completions scored alike); "
              "widen rl.n_steps or raise rl.temperature", file=sys.stderr)
    recent = history[-cfg.flat_rounds:]
    if cfg.flat_rounds and len(recent) == cfg.flat_rounds and max(recent) - min(recent) < 1e-6:
        print(f"warning: the mean reward has been {recent[-1]} for {cfg.flat_rounds} rounds", file=sys.stderr)


# --- problems: the difficulty pool -----------------------------------------------------------
class ProblemPool:
    """Problems for the next round: retried unsolved ones first (up to half a round), then fresh
    ones: from the generator, or the next of an importer's `records` (a fresh seeded order every
    pass over them). A problem every sample solved retires; others return up to `retries` times."""

    def __init__(self, task, cfg: RLConfig, state: dict | None = None, records: list[Example] | None = None):
        self.task, self.cfg, self.records = task, cfg, records
        self.rng = random.Random(cfg.seed)
        self.queue: list[tuple[Example, int]] = []  # (problem, attempts so far)
        self.made = self.retired = 0
        self._order: tuple[int, list[int]] = (-1, [])  # (pass, record order): a function of the seed and `made`
        if state:
            version, internal, gauss = state["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
            self.queue = [(Example.from_row(row), n) for row, n in state["queue"]]
            self.made, self.retired = state["made"], state["retired"]

    def draw(self, n: int) -> list[tuple[Example, int]]:
        retry = min(len(self.queue), n // 2)
        out, self.queue = self.queue[:retry], self.queue[retry:]
        while len(out) < n:
            out.append((self.fresh(), 0))
        return out

    def fresh(self) -> Example:
        self.made += 1
        if self.records is None:
            replay = self.cfg.replay_fraction and self.rng.random() < self.cfg.replay_fraction
            n_steps = self.rng.randint(*(self.cfg.replay_steps if replay else self.cfg.n_steps))
            return new_problem(self.task, self.rng, n_steps, f"rl-{self.made}")
        epoch, k = divmod(self.made - 1, len(self.records))
        if self._order[0] != epoch:
            self._order = (epoch, random.Random(self.cfg.seed * 1_000_003 + epoch).sample(range(len(self.records)),
                                                                                          len(self.records)))
        example = self.records[self._order[1][k]]
        return dataclasses.replace(example, id=example.id or f"rl-{self.made}")

    def give_back(self, example: Example, attempts: int, solved: int, group: int) -> None:
        if solved == group:
            self.retired += 1
        elif attempts < self.cfg.retries:
            self.queue.append((example, attempts + 1))

    def state(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "made": self.made, "retired": self.retired,
                "queue": [[e.to_row(), n] for e, n in self.queue]}


# --- rollouts --------------------------------------------------------------------------------
def collect(engine, tokenizer, pool: ProblemPool, cfg: RLConfig, rnd: int,
            accelerator) -> tuple[list[Group], list[Group], float]:
    """(groups to train on, every group sampled this round, the fraction of the first draw's
    groups without signal). With dynamic_sampling, groups without signal are replaced by groups
    of more problems (at most max_resamples extra passes) and only groups with signal are kept."""
    wanted, train, seen, zero_first = cfg.prompts_per_round, [], [], 0.0
    for attempt in range(1 + (cfg.max_resamples if cfg.dynamic_sampling else 0)):
        problems = pool.draw(wanted - len(train))
        fresh = rollout(engine, tokenizer, pool.task, problems, cfg, (cfg.seed * 1009 + rnd) * 1009 + attempt,
                        accelerator)
        for g in fresh:
            assign_credit(g, cfg, tokenizer)
            pool.give_back(g.example, g.attempts, sum(s.valid for s in g.rollouts), len(g.rollouts))
        signal = [g for g in fresh if has_signal(g, cfg)]
        if attempt == 0:
            zero_first = 1 - len(signal) / len(fresh)
        seen += fresh
        train += signal if cfg.dynamic_sampling else fresh
        if len(train) >= wanted or not cfg.dynamic_sampling:
            break
    return train, seen, zero_first


def rollout(engine, tokenizer, task, problems, cfg: RLConfig, seed: int, accelerator) -> list[Group]:
    """num_generations completions of every problem, scored by the task's checker (by every
    process, each holding every completion)."""
    G, eot = cfg.num_generations, tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    prompts = [encode_prompt(tokenizer, prompt_messages(ex.question)) for ex, _ in problems]
    params = SamplingParams(max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
                            seeds=[seed * 100_003 + k for k in range(len(problems) * G)],
                            batch_size=cfg.sample_batch_size)
    outs = sample(engine, [p for p in prompts for _ in range(G)], params, accelerator)
    groups = []
    for k, (example, attempts) in enumerate(problems):
        rollouts = []
        for ids in outs[k * G:(k + 1) * G]:
            truncated = len(ids) >= cfg.max_completion_length  # the engine drops the stop token that ended a row
            text = tokenizer.decode(ids)
            rollouts.append(score(task, example, text, truncated, cfg.truncation_penalty,
                                  prompts[k], ids if truncated else ids + [eot]))
        groups.append(Group(example, attempts, rollouts))
    return groups


def sample(engine, prompts: list[list[int]], params: SamplingParams, accelerator) -> list[list[int]]:
    """engine.generate sharded over the processes (each decodes the batches dealt to it), the
    completions gathered back in prompt order on every process."""
    outs = engine.generate(prompts, params, rank=accelerator.process_index, world=accelerator.num_processes)
    done = dict(gathered(accelerator, [(i, ids) for i, ids in enumerate(outs) if ids is not None]))
    return [done[i] for i in range(len(prompts))]


# --- the update ------------------------------------------------------------------------------
# At a low temperature many of a group's completions are the same tokens (an easy problem's G
# samples are often one chain). Identical rollouts (same prompt, completion and credit) have
# identical gradients, so each runs once with its count as a weight: the same loss, fewer tokens.
def unique(batch: list[Rollout]) -> tuple[list[Rollout], list[int]]:
    """(distinct rollouts in first-seen order, how many times each occurs)."""
    index: dict = {}
    for s in batch:
        key = (tuple(s.prompt), tuple(s.completion), tuple(s.advantages or ()), tuple(s.kept or ()))
        index.setdefault(key, [s, 0])[1] += 1
    return [s for s, _ in index.values()], [n for _, n in index.values()]


def token_weights(lengths: list[int], loss_type: str, max_completion_length: int,
                  counts: list[int] | None = None) -> list[float]:
    """What one token's loss counts in the batch's loss, per completion (see the docstring); with
    `counts`, completion i stands for counts[i] identical ones."""
    counts = counts or [1] * len(lengths)
    n, total = sum(counts), sum(k * c for k, c in zip(lengths, counts))
    if loss_type == "grpo":
        return [c / (n * max(k, 1)) for k, c in zip(lengths, counts)]
    if loss_type == "dr_grpo":
        return [c / (n * max_completion_length) for c in counts]
    return [c / max(total, 1) for c in counts]  # dapo


@dataclasses.dataclass
class Forward:
    """Rollouts laid out for one forward pass, and where each one's completion is predicted.

    Right-padded (the default): a row per rollout; under causal attention no real token sees a
    pad, so no mask is passed (SDPA's causal kernel instead of a masked one). Packed
    (rl.packed_attention): every rollout back to back in one row without padding, position ids
    restarting at each, kept apart by packed attention (reasonlm/packing.py), as in training.
    Per-token tensors line up with logits[:, :-1]: position p predicts token p + 1, and rollout
    i's completion tokens are predicted at spans[i] = (row, p0), p0 + 1, ... (p0: its prompt's
    last token). A packed row's last token of one rollout "predicts" the next one's first token:
    that position lies in no span, so it carries no loss."""
    ids: torch.Tensor
    spans: list[tuple[int, int]]
    position_ids: torch.Tensor | None = None
    packed_rows: PackedRows | None = None

    def place(self, values: list[list[float]]) -> torch.Tensor:
        """(rows, width - 1): values[i][j] where rollout i's completion token j is predicted, else 0."""
        out = torch.zeros((self.ids.shape[0], self.ids.shape[1] - 1))
        for (row, p), v in zip(self.spans, values):
            out[row, p:p + len(v)] = torch.as_tensor(v, dtype=torch.float32)
        return out

    def take(self, per_token: torch.Tensor, i: int, n: int) -> torch.Tensor:
        """Rollout i's first n completion positions of a (rows, width - 1) tensor."""
        row, p = self.spans[i]
        return per_token[row, p:p + n]

    def to(self, device) -> Forward:
        if self.packed_rows is None:
            return dataclasses.replace(self, ids=self.ids.to(device))
        return dataclasses.replace(self, ids=self.ids.to(device), position_ids=self.position_ids.to(device),
                                   packed_rows=self.packed_rows.to(device))


def collate(rollouts: list[Rollout], pad_id: int, packed: bool = False) -> Forward:
    """The rollouts' prompt + completion tokens as one Forward: right-padded rows, or packed."""
    seqs = [s.prompt + s.completion for s in rollouts]
    if packed:
        starts = [0, *itertools.accumulate(len(q) for q in seqs)][:-1]
        return Forward(torch.tensor([t for q in seqs for t in q])[None],
                       [(0, at + len(s.prompt) - 1) for at, s in zip(starts, rollouts)],
                       torch.cat([torch.arange(len(q)) for q in seqs])[None],
                       PackedRows.from_lengths([len(q) for q in seqs]))
    ids = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    for r, q in enumerate(seqs):
        ids[r, :len(q)] = torch.tensor(q)
    return Forward(ids, [(r, len(s.prompt) - 1) for r, s in enumerate(rollouts)])


def token_logprobs(model, batch: Forward, with_entropy: bool = False):
    """log p(next token) at every position of `batch` (and the entropy of its distribution)."""
    if batch.packed_rows is None:
        out = model(input_ids=batch.ids, use_cache=False)
    else:
        out = packed_forward(model, batch.ids, batch.position_ids, batch.packed_rows)
    logp_all = F.log_softmax(out.logits[:, :-1].float(), -1)
    logp = logp_all.gather(-1, batch.ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, entropy


def policy_loss(logp, old_logp, ref_logp, advantages, weight, cfg: RLConfig):
    """The weighted sum of GRPO's per-token loss, and its clip statistics (see the docstring)."""
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - cfg.epsilon, 1 + (cfg.epsilon_high or cfg.epsilon))
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)
    if cfg.beta:
        q = ref_logp - logp
        per_token = per_token + cfg.beta * (torch.exp(q) - q - 1)
    live = weight > 0
    clipped_tokens = (clipped * advantages < ratio * advantages) & live
    return (per_token * weight).sum(), {"clipped_tokens": clipped_tokens, "ratio_min": ratio[live].min().item(),
                                        "ratio_max": ratio[live].max().item()}


@torch.no_grad()
def reference_logprobs(model, reference: dict, batch: Forward):
    """Log-probs under the starting adapter: its weights are swapped in for one forward."""
    params = dict(model.named_parameters())
    current = {n: params[n].detach().clone() for n in reference}
    for n, w in reference.items():
        params[n].copy_(w)
    logp, _ = token_logprobs(model, batch)
    for n, w in current.items():
        params[n].copy_(w)
    return logp


def mini_batches(counts: list[int], size: int, rng: random.Random) -> list[list[int]]:
    """A shuffled pass over distinct rollouts (by index), cut where a mini-batch holds `size` drawn
    rollouts (a rollout drawn c times counts c)."""
    out, filled = [[]], 0
    for i in rng.sample(range(len(counts)), len(counts)):
        if filled >= size:
            out, filled = out + [[]], 0
        out[-1].append(i)
        filled += counts[i]
    return out


# With N processes every process holds the whole round (the same rollouts, the same shuffles);
# each runs every N-th rollout of a length-sorted mini-batch (an even share of its tokens), in
# micro-batches, weighted as a part of the whole mini-batch, and the gradients are summed over
# processes before the step: the mini-batch's gradient, up to the order of the float sums. The
# forward runs on the unwrapped model: DDP's hooks would expect every process to run the same
# number of backward passes.
def share(indices: list[int], accelerator, size: int) -> list[list[int]]:
    """This process's every-N-th of `indices`, cut into micro-batches of `size`."""
    mine = indices[accelerator.process_index::accelerator.num_processes]
    return [mine[j:j + size] for j in range(0, len(mine), size)]


def grpo_update(model, optimizer, batch: list[Rollout], reference: dict, cfg: RLConfig, accelerator,
                seed: int = 0) -> dict:
    """num_iterations shuffled passes over the round's rollouts in mini-batches of mini_batch_size
    drawn rollouts, one optimizer step each. The old (and reference) log-probs of every rollout are
    computed first, by the same model in the same precision, so the first step's ratio is exactly 1."""
    if not batch:
        return {"loss": 0.0, "kl": 0.0, "entropy": None, "clip_fraction": 0.0}
    net = accelerator.unwrap_model(model)
    net.train()
    device = next(net.parameters()).device
    tokens = sum(len(s.completion) for s in batch)
    distinct, counts = unique(batch)
    pad = net.config.pad_token_id or 0
    before = []  # (distinct rollout, log-probs of its completion tokens before any step, reference's)
    for idx in share(list(range(len(distinct))), accelerator, cfg.micro_batch_size):
        part = [distinct[i] for i in idx]
        fwd = collate(part, pad, cfg.packed_attention).to(device)
        with torch.no_grad():
            logp = token_logprobs(net, fwd)[0]
        logp_ref = reference_logprobs(net, reference, fwd)
        for r, (i, s) in enumerate(zip(idx, part)):
            n = len(s.completion)  # not views: a view would pickle (gather) its whole micro-batch buffer
            before.append((i, fwd.take(logp, r, n).cpu().clone(), fwd.take(logp_ref, r, n).cpu().clone()))
    before = sorted(gathered(accelerator, before), key=lambda x: x[0])
    old, ref = [x[1] for x in before], [x[2] for x in before]
    rng = random.Random(seed)
    # summed over this process's micro-batches: [loss of the last pass, clipped tokens of the last
    # pass, kl, entropy] (kl and entropy: per-token means of the first pass), ratio min and max
    sums, ratio_min, ratio_max = [0.0] * 4, 1.0, 1.0
    for it in range(cfg.num_iterations):
        sums[0] = sums[1] = 0.0
        minis = mini_batches(counts, cfg.mini_batch_size, rng)
        for mini in minis:
            mini.sort(key=lambda i: len(distinct[i].prompt) + len(distinct[i].completion))  # micro-batches pad less
            weights = dict(zip(mini, token_weights([len(distinct[i].completion) for i in mini], cfg.loss_type,
                                                   cfg.max_completion_length, [counts[i] for i in mini])))
            for idx in share(mini, accelerator, cfg.micro_batch_size):
                part = [distinct[i] for i in idx]
                fwd = collate(part, pad, cfg.packed_attention)
                adv, weight, old_m, ref_m, multiplicity = (fwd.place(v).to(device) for v in (
                    [s.advantages for s in part], [[weights[i]] * len(s.completion) for i, s in zip(idx, part)],
                    [old[i] for i in idx], [ref[i] for i in idx],
                    [[counts[i]] * len(s.completion) for i, s in zip(idx, part)]))
                logp, entropy = token_logprobs(net, fwd.to(device), with_entropy=it == 0)
                loss, clip = policy_loss(logp, old_m, ref_m, adv, weight, cfg)
                accelerator.backward(loss)
                sums[0] += loss.item()
                sums[1] += (clip["clipped_tokens"] * multiplicity).sum().item()
                ratio_min, ratio_max = min(ratio_min, clip["ratio_min"]), max(ratio_max, clip["ratio_max"])
                if it == 0:  # per-token means over the batch as drawn (duplicates counted)
                    live, q = weight > 0, ref_m - logp.detach()
                    sums[2] += ((torch.exp(q) - q - 1) * multiplicity * live).sum().item() / tokens
                    sums[3] += (entropy * multiplicity * live).sum().item() / tokens
            step(net, optimizer, cfg, accelerator)
    loss, hits, kl, entropy = across(accelerator, sums, "sum")
    stats = {"loss": loss / len(minis), "kl": kl, "entropy": entropy, "clip_fraction": hits / tokens,
             "ratio_min": across(accelerator, [ratio_min], "min")[0], "ratio_max": across(accelerator, [ratio_max], "max")[0]}
    return {k: round(v, 6) for k, v in stats.items()}


def sft_update(model, optimizer, batch: list[Rollout], cfg: RLConfig, accelerator, seed: int) -> dict:
    """Expert iteration: num_iterations shuffled passes over the kept samples with the SFT loss
    (minus the mean log-likelihood of a mini-batch's kept tokens). A mini-batch holds
    mini_batch_size kept samples; identical ones run as one row weighted by their count."""
    net = accelerator.unwrap_model(model)
    net.train()
    device = next(net.parameters()).device
    pad = net.config.pad_token_id or 0
    rng, loss_sum, steps = random.Random(seed), 0.0, 0
    distinct, counts = unique([kept_part(s) for s in batch])
    for _ in range(cfg.num_iterations if batch else 0):
        for mini in mini_batches(counts, cfg.mini_batch_size, rng):
            mini.sort(key=lambda i: len(distinct[i].prompt) + len(distinct[i].completion))  # micro-batches pad less
            total = sum(counts[i] * sum(distinct[i].kept) for i in mini)
            for idx in share(mini, accelerator, cfg.micro_batch_size):
                part = [distinct[i] for i in idx]
                fwd = collate(part, pad, cfg.packed_attention)
                keep, weight = (fwd.place(v).to(device) for v in (
                    [[float(k) for k in s.kept] for s in part],
                    [[counts[i] / total] * len(s.kept) for i, s in zip(idx, part)]))
                loss = -(token_logprobs(net, fwd.to(device))[0] * keep * weight).sum()
                accelerator.backward(loss)
                loss_sum += loss.item()
            step(net, optimizer, cfg, accelerator)
            steps += 1
    loss = across(accelerator, [loss_sum], "sum")[0] / max(1, steps)
    return {"loss": round(loss, 6), "kl": None, "entropy": None, "clip_fraction": None}


def kept_part(s: Rollout) -> Rollout:
    """`s` ending at its last kept token. Under causal attention no kept token's logit sees a later
    token, so the loss is the same, and a failed sample's valid prefix is often half its
    completion: on the default recipe's first round this forwards ~46% fewer (padded) tokens.
    Samples that differ only after their kept prefix become one row, weighted by their count."""
    end = max(t for t, k in enumerate(s.kept) if k) + 1
    return dataclasses.replace(s, completion=s.completion[:end], kept=s.kept[:end])


def step(net, optimizer, cfg: RLConfig, accelerator) -> None:
    """Sum the gradients over processes (see above), clip, step."""
    params = [p for p in net.parameters() if p.requires_grad]
    if accelerator.num_processes > 1:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view_as(p).clone()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def gathered(accelerator, items: list) -> list:
    """Every process's items (picklable), in process order, on every process."""
    if accelerator.num_processes == 1:
        return items
    parts: list = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def across(accelerator, values: list[float], op: str) -> list[float]:
    """Per-process statistics combined over processes (sum, min or max)."""
    if accelerator.num_processes == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t, op={"sum": torch.distributed.ReduceOp.SUM, "min": torch.distributed.ReduceOp.MIN,
                                        "max": torch.distributed.ReduceOp.MAX}[op])
    return t.tolist()


# --- logs ------------------------------------------------------------------------------------
def completion_log(group: Group, rnd: int) -> dict:
    ex = group.example
    return {"round": rnd, "id": ex.id, "question": ex.question, "answer": ex.answer, "n_steps": ex.n_steps,
            "completions": [{"text": s.text, "reward": s.reward, "steps_ok": s.ok, "correct": s.correct,
                             "chain_valid": s.valid, "truncated": s.truncated, "kept_tokens": sum(s.kept or []),
                             "advantages": [round(a, 3) for a in s.advantages or []]} for s in group.rollouts]}
