"""RL stage: improve the SFT adapter on problems without gold solutions, scored by the task's checker.

    reasonlm rl recipes/tiny-cpu.yaml [rl.reward=outcome rl.rounds=40 ...]

Read top to bottom: the stage (`run`) -> the loop (`fit`) -> logs; the difficulty pool is
rl/pool.py, the rollouts rl/rollouts.py, the updates rl/update.py; the checker's verdict and the
credit below are reasonlm/credit.py. No trainer classes. A round draws
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
lowest reward counts) below 1, else the run stops. With rl.curriculum the lengths of fresh problems
come from a range that moves up as the frontier's probe passes (reasonlm/curriculum.py).
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
import json
import os
import random
import sys
import time

import torch

from reasonlm import outputs
from reasonlm.answer import encode_example, encode_prompt, prompt_messages
from reasonlm.checkpoint import (check_resumable, keep_metrics_until, made_from, resume_or_start, save_checkpoint,
                                 save_weights, stop_if_diverged, trainable_state_dict)
from reasonlm.config import Recipe, RLConfig, RunPaths, base_model, save_resolved
from reasonlm.credit import Group, Rollout, preflight, score
from reasonlm.curriculum import Curriculum, check_reach, describe
from reasonlm.engine import SamplingParams, engine_for
from reasonlm.example import Example, read_dataset, render_target
from reasonlm.model import adapter_tokenizer, check_adapter, load_adapter, model_context, resolve_device, set_threads
from reasonlm.packing import check_packable, use_packed_attention
from reasonlm.processes import cores_each, run_processes
from reasonlm.rl.pool import ProblemPool
from reasonlm.rl.rollouts import collect, sample
from reasonlm.rl.update import grpo_update, sft_update
from reasonlm.sources import ladder_problems
from reasonlm.tasks import get_task, is_importer, load_plugins
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

    load_plugins(recipe.all_task_files)
    cfg, paths = recipe.rl, RunPaths(recipe.out_dir)
    if cfg is None:
        raise RLError("the recipe has no rl: section")
    run_dir = paths.train_run("rl")
    # cpu=True on the CPU: processes started together then form a gloo group there (see train.run)
    accelerator = tracked_accelerator(recipe.train.report_to, run_dir, cpu=resolve_device(recipe.device).type == "cpu")
    name, knobs = problem_family(cfg, recipe)
    task = get_task(name, **knobs)
    records = imported_problems(task, cfg)
    if cfg.curriculum and records is not None:
        raise RLError(f"rl.curriculum needs a generated task family (it makes problems of any length); {task.name} is "
                      "an importer, whose problems have the lengths they have")
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
    if cfg.curriculum:  # so must the longest chains the curriculum may reach fit
        check_reach(task, adapter_tokenizer(base, adapter), model_context(base), cfg)
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
        pool = ProblemPool(task, cfg, state.get("pool"), records,
                           Curriculum(cfg.curriculum, state.get("curriculum")) if cfg.curriculum else None)
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
            update = grpo_update(model, optimizer, batch, reference, cfg, accelerator, seed=cfg.seed * 7919 + rnd,
                                 pad_id=engine.pad_id)
        else:
            batch = [s for g in groups for s in g.rollouts if s.kept]
            batch += sft_replay(sft_rows, tokenizer, cfg, rnd) if cfg.replay_sft else []
            update = sft_update(model, optimizer, batch, cfg, accelerator, seed=cfg.seed * 7919 + rnd,
                                pad_id=engine.pad_id)
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
        if pool.curriculum:  # the range this round trained on, and every probe_every rounds the frontier's probe
            record["curriculum_range"] = list(pool.curriculum.range)
            if (rnd + 1) % cfg.probe_every == 0:
                record["curriculum"] = frontier_probe(engine, tokenizer, pool, cfg, accelerator, rnd + 1)
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
            save_checkpoint(accelerator, run_dir, done, cfg.keep_last, None, {
                "pool": pool.state(), "history": history, "samples_total": samples_total, "made_from": origin,
                **({"curriculum": pool.curriculum.state()} if pool.curriculum else {})})
    return {"rounds": cfg.rounds, "samples": samples_total, "seconds": round(time.time() - t_start, 1),
            "final_reward_mean": history[-1] if history else None,
            **({"curriculum": pool.curriculum.summary()} if pool.curriculum else {})}


def round_lr(cfg: RLConfig, rnd: int) -> float:
    """The learning rate of round rnd (from 0)."""
    return cfg.lr * (1 - rnd / cfg.rounds) if cfg.lr_scheduler_type == "linear" else cfg.lr


PROBE_SEED = 2_000_003  # rl.seed draws training problems (small integers); eval/bench_rl.py's ladder 1_000_003


def probe_set(task, tokenizer, cfg: RLConfig, lengths=None, n: int = 0) -> list[tuple[Example, list[int]]]:
    """The fixed held-out (problem, prompt ids) of every probe length (rl.probe_steps, or `lengths`),
    rl.probe_problems (or `n`) of each."""
    lengths = lengths or range(cfg.probe_steps[0], cfg.probe_steps[1] + 1)
    problems = ladder_problems(task, lengths, n or cfg.probe_problems, PROBE_SEED, "probe")
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


def frontier_probe(engine, tokenizer, pool, cfg: RLConfig, accelerator, rnd: int) -> dict:
    """rl.curriculum: greedy accuracy at the frontier on its fixed probe problems, and the move it
    makes (None: none), printed."""
    frontier = pool.curriculum.frontier
    probe = probe_set(pool.task, tokenizer, cfg, [frontier], cfg.curriculum.probe_problems)
    accuracy = run_probe(engine, tokenizer, pool.task, probe, cfg, accelerator)[str(frontier)]
    move = pool.curriculum.after_probe(rnd, accuracy)
    if move and accelerator.is_main_process:
        print(describe(move), flush=True)
    return {"frontier": frontier, "probe_accuracy": accuracy, "move": move}


def warn_if_stuck(history: list, zero_signal: float, cfg: RLConfig, rnd: int) -> None:
    if zero_signal >= 1.0:
        print(f"warning: round {rnd}: every group carries no signal (all its completions scored alike); "
              "widen rl.n_steps or raise rl.temperature", file=sys.stderr)
    recent = history[-cfg.flat_rounds:]
    if cfg.flat_rounds and len(recent) == cfg.flat_rounds and max(recent) - min(recent) < 1e-6:
        print(f"warning: the mean reward has been {recent[-1]} for {cfg.flat_rounds} rounds", file=sys.stderr)


# --- logs ------------------------------------------------------------------------------------
def completion_log(group: Group, rnd: int) -> dict:
    ex = group.example
    return {"round": rnd, "id": ex.id, "question": ex.question, "answer": ex.answer, "n_steps": ex.n_steps,
            "completions": [{"text": s.text, "reward": s.reward, "steps_ok": s.ok, "correct": s.correct,
                             "chain_valid": s.valid, "truncated": s.truncated, "kept_tokens": sum(s.kept or []),
                             "advantages": [round(a, 3) for a in s.advantages or []]} for s in group.rollouts]}
