"""Training stage: LoRA (or full) supervised fine-tuning in one Accelerate loop.

    reasonlm train recipes/tiny-cpu.yaml                                  # one process
    accelerate launch --cpu --num_processes 2 -m reasonlm train recipes/tiny-cpu.yaml

Read top to bottom: settings -> data (tokenise with the one renderer, pack) -> model -> loop
-> checkpoints -> final adapter. No trainer classes. Every logged record goes to metrics.jsonl
(and to the trackers of train.report_to); the run ends by drawing loss.png from it.

How a batch is made: examples are tokenised exactly as eval and chat will see them
(answer.encode_example), then packed several to a row of `seq_len` tokens. Each example keeps
its own position ids starting at 0; transformers turns position-id resets (with no attention
mask and no cache) into a block-diagonal causal mask, so packed examples never attend to each
other. With train.packed_attention, the examples run back to back without padding and
attention runs per example (reasonlm/packing.py); no mask is built. Only
completion tokens (the steps, the answer line and the end-of-turn token) carry loss.

How the global batch is split: every process computes the same global batch of
`batch_tokens / seq_len` rows for a step and takes its own slice of each micro-batch. The loss
is a sum over supervised tokens divided by the token count of the whole global batch, so one
process and N processes (with DDP's gradient averaging undone by a factor N) take the same step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from accelerate.utils import DistributedType, broadcast_object_list, set_seed
from tqdm.auto import tqdm

from reasonlm import outputs
from reasonlm.answer import encode_example, encode_prompt, pad_token_id, parse_completion, prompt_messages
from reasonlm.checkpoint import (RUN_FILES, check_resumable, keep_metrics_until, made_from, resume_or_start,
                                 save_checkpoint, save_weights, stop_if_diverged, trainable_state_dict)
from reasonlm.config import DIRECT_RUN, Recipe, RunPaths, TrainConfig, base_model, save_resolved
from reasonlm.engine import SamplingParams, engine_for
from reasonlm.example import Example, answer_budget, read_dataset, render_target
from reasonlm.model import (attach_lora, count_parameters, fit_vocab, load_model, load_tokenizer, modules_to_save,
                            resolve_device, set_threads)
from reasonlm.packing import (IGNORE, PackedRows, check_packable, collate, pack, packed_forward,
                              use_packed_attention)
from reasonlm.plots import plot_training_curves
from reasonlm.tasks import load_plugins
from reasonlm.tracking import finish_tracking, start_tracking, tracked_accelerator
from reasonlm.verdict import answer_right

class TrainError(ValueError):
    """A training problem reported as one line."""


# --- data: render, tokenise, pack -------------------------------------------------------------
def encode_rows(rows, tokenizer, fmt: str, seq_len: int, too_long: str = "drop"):
    """[(input_ids, labels)] for dataset rows, in the 'cot' or 'direct' completion format."""
    if fmt not in ("cot", "direct"):
        raise TrainError(f"train.format must be 'cot' or 'direct', got {fmt!r}")
    out, dropped = [], 0
    for r in rows:
        prompt, answer = encode_example(tokenizer, r["question"], render_target(Example.from_row(r), fmt))
        ids = prompt + answer
        if len(ids) > seq_len:
            if too_long == "error":
                raise TrainError(f"example {r.get('id', '?')} has {len(ids)} tokens > seq_len={seq_len} "
                                 f"(raise train.seq_len or set train.too_long=drop)")
            dropped += 1
            continue
        out.append((ids, [IGNORE] * len(prompt) + answer))
    if dropped:
        print(f"warning: dropped {dropped} of {len(rows)} examples longer than seq_len={seq_len}")
    if not out:
        raise TrainError("no training examples left (empty dataset, or every example is longer than seq_len)")
    return out


class Batches:
    """Deterministic global batches: step -> rows. Resuming at step s replays nothing."""

    def __init__(self, examples, seq_len, rows_per_step, seed):
        self.examples, self.seq_len, self.rows_per_step, self.seed = examples, seq_len, rows_per_step, seed
        self._epoch, self._rows = -1, []
        first = pack(examples, seq_len, seed)
        self.steps_per_epoch = len(first) // rows_per_step
        if self.steps_per_epoch == 0:
            raise TrainError(f"the data fills {len(first)} rows of {seq_len} tokens, fewer than one batch of "
                             f"{rows_per_step} rows; lower train.batch_tokens or add data")

    def rows_for_step(self, step: int):
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._rows = epoch, pack(self.examples, self.seq_len, self.seed + epoch)
        return self._rows[k * self.rows_per_step:(k + 1) * self.rows_per_step]


# --- loss ------------------------------------------------------------------------------------
def token_losses(model, input_ids, labels, position_ids, attention=None):
    """Summed next-token loss over supervised tokens, and their count. `attention`: what collate
    returned to keep examples apart (None, a mask, or PackedRows). collate builds them on the CPU;
    they go to the model's device here (on the CPU a no-op)."""
    count = int((labels[:, 1:] != IGNORE).sum())  # on the CPU: no wait for the device
    device = next(model.parameters()).device
    input_ids, labels, position_ids = (t.to(device) for t in (input_ids, labels, position_ids))
    attention = attention.to(device) if attention is not None else None
    if isinstance(attention, PackedRows):
        out = packed_forward(model, input_ids, position_ids, attention)
    else:
        out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention, use_cache=False)
    logits = out.logits[:, :-1].float()
    target = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss, count


def lr_lambda(cfg: TrainConfig):
    def f(step):
        if step < cfg.warmup_steps:
            return (step + 1) / max(1, cfg.warmup_steps)
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, progress)
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


# --- the loop --------------------------------------------------------------------------------
FRESH = "set train.resume=never to start over (its checkpoints are then removed)"  # how to start a train run over


def fit(model, tokenizer, train_rows, val_rows, cfg: TrainConfig, run_dir: str, accelerator, origin=None,
        fresh: str = FRESH):
    """Train `model` on `train_rows`; checkpoints and metrics go to run_dir. Returns metrics.
    `origin` (checkpoint.made_from): what the checkpoints record they were made from; a resume
    from one made from anything else is refused, saying `fresh`: how to start over instead."""
    if cfg.packed_attention and cfg.compile:  # the groups change every step: the graph would be rebuilt each time
        raise TrainError("train.compile and train.packed_attention cannot be combined; turn one off")
    check_packable(model.config)
    world, rank = accelerator.num_processes, accelerator.process_index
    rows_per_step = max(1, cfg.batch_tokens // cfg.seq_len)
    if rows_per_step % (world * cfg.grad_accum):
        raise TrainError(f"batch_tokens/seq_len = {rows_per_step} rows per step must divide evenly over "
                         f"{world} processes x grad_accum {cfg.grad_accum}")
    micro_rows = rows_per_step // (world * cfg.grad_accum)
    examples = encode_rows(train_rows, tokenizer, cfg.format, cfg.seq_len, cfg.too_long)
    batches = Batches(examples, cfg.seq_len, rows_per_step, cfg.seed)
    val_examples = encode_rows(val_rows, tokenizer, cfg.format, cfg.seq_len, "drop") if len(val_rows) else []
    # rows longer than seq_len are dropped, never cut: train_stats.json says how many
    too_long = {"train": len(train_rows) - len(examples), "validation": len(val_rows) - len(val_examples)}

    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for all parameters (the per-tensor loop is the slow default on CPU)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay, fused=True)
    # The scheduler is stepped by hand once per optimizer step (Accelerate's wrapper would step it
    # once per process); checkpoints carry its state as JSON (save_checkpoint).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    if cfg.packed_attention:
        use_packed_attention(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    # FSDP replaces parameters inside prepare(): clip the ones the prepared model holds.
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.full_finetune is False:
        # Checkpoints hold only the adapter weights (plus optimizer state), not the frozen base.
        def keep_trainable(models, weights, output_dir):
            for i, m in enumerate(models):
                weights[i] = trainable_state_dict(accelerator.unwrap_model(m))
        accelerator.register_save_state_pre_hook(keep_trainable)

    start, state = resume_or_start(accelerator, model, run_dir, scheduler, cfg.resume, origin, fresh)
    best, stale = state.get("best"), state.get("stale", 0)  # stale: evaluations since the best one
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if accelerator.is_main_process:
        keep_metrics_until(metrics_path, start)
    pad_id = pad_token_id(tokenizer)
    line_break_id = None
    if cfg.line_jitter:
        ids = tokenizer.encode("\n", add_special_tokens=False)
        if len(ids) != 1:
            raise TrainError("train.line_jitter needs a tokenizer with a single-token line break")
        line_break_id = ids[0]
    # the compiled module shares the model's parameters; every other use (validation, saving,
    # no_sync) goes through `model` itself
    forward = torch.compile(model) if cfg.compile else model
    model.train()
    t_start, tokens_seen = time.time(), 0
    steady = None  # (time, tokens) after the first step: throughput without warm-up or compile time
    steady_tok_s = float("nan")
    bar = tqdm(total=cfg.steps, initial=start, disable=not accelerator.is_main_process or not cfg.log_every or not sys.stderr.isatty(),
               desc=os.path.basename(run_dir), dynamic_ncols=True, mininterval=2.0)
    loss_value = float("nan")
    for step in range(start, cfg.steps):
        rows = batches.rows_for_step(step)
        global_tokens = sum(sum(1 for x in examples[i][1][1:] if x != IGNORE) for row in rows for i in row)
        step_loss = 0.0
        for m in range(cfg.grad_accum):
            micro = rows[m * micro_rows * world:(m + 1) * micro_rows * world][rank * micro_rows:(rank + 1) * micro_rows]
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 101 + m * 7 + rank)
            input_ids, labels, position_ids, attention = collate(examples, micro, cfg.seq_len, pad_id,
                                                                 cfg.position_jitter, gen, line_break_id,
                                                                 cfg.packed_attention)
            sync = m == cfg.grad_accum - 1
            ctx = accelerator.no_sync(model) if not sync and world > 1 else contextlib.nullcontext()
            with ctx, accelerator.autocast():
                loss_sum, _ = token_losses(forward, input_ids, labels, position_ids, attention)
                # DDP averages gradients over processes; multiply by world to get the global sum.
                loss = loss_sum / global_tokens * world
                accelerator.backward(loss)
            step_loss += loss_sum.item()
            tokens_seen += sum(len(examples[i][0]) for row in micro for i in row)
        if world > 1:
            step_loss = accelerator.reduce(torch.tensor(step_loss), reduction="sum").item()
        loss_value = step_loss / global_tokens
        stop_if_diverged(loss_value, f"step {step + 1}", run_dir, "Lower train.lr or check the data.")
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        now = time.time()
        elapsed = now - t_start
        tok_s = tokens_seen * world / max(elapsed, 1e-9)
        if steady is None:
            steady = (now, tokens_seen)
        else:
            steady_tok_s = (tokens_seen - steady[1]) * world / max(now - steady[0], 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{tok_s:,.0f}")
        record = None
        if cfg.log_every and (done % cfg.log_every == 0 or done == cfg.steps):
            record = {"step": done, "loss": round(loss_value, 5), "lr": scheduler.get_last_lr()[0],
                      "tokens_per_s": round(tok_s, 1), "elapsed_s": round(elapsed, 1)}
            if cfg.compile:  # the first step holds the compile time
                record["tokens_per_s_after_first_step"] = round(steady_tok_s, 1)
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
            record = record or {"step": done, "loss": round(loss_value, 5)}
            record.update(validation_metrics(model, tokenizer, val_examples, val_rows, cfg, accelerator))
            score = record.get("val_accuracy", -record.get("val_loss", 0.0))
            improved = [best is None or score > best["score"]]
            if world > 1:  # only the main process measures accuracy: every process follows its verdict
                broadcast_object_list(improved)
            if improved[0]:
                best, stale = {"step": done, "score": score}, 0
                save_weights(accelerator, model, tokenizer, os.path.join(run_dir, "best"), cfg)
            else:
                stale += 1
            model.train()
        if record and accelerator.is_main_process:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.write(" ".join(f"{k}={v}" for k, v in record.items()))
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=done)
        if cfg.early_stop_patience and stale >= cfg.early_stop_patience:
            accelerator.print(f"early stop at step {done}: no better score in {stale} evaluations "
                              f"(best at step {best['step']}, kept in {os.path.join(run_dir, 'best')})")
            break
        if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
            save_checkpoint(accelerator, run_dir, done, cfg.keep_last, scheduler,
                            {"best": best, "stale": stale, "loss": loss_value, "made_from": origin})
    bar.close()
    if accelerator.is_main_process:
        plot_metrics(metrics_path, os.path.join(run_dir, "loss.png"), os.path.basename(os.path.normpath(run_dir)))
    elapsed = time.time() - t_start
    return {"steps": done if start < cfg.steps else start, "final_loss": loss_value, "train_seconds": round(elapsed, 1),
            "tokens_per_s": round(tokens_seen * world / max(elapsed, 1e-9), 1),
            "tokens_per_s_after_first_step": round(steady_tok_s, 1), "best": best, "too_long": too_long}


def plot_metrics(metrics_path: str, png_path: str, title: str) -> str | None:
    """loss.png: training loss and the validation curves in metrics.jsonl (None if it is empty)."""
    if not os.path.exists(metrics_path):
        return None
    with open(metrics_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return plot_training_curves(records, png_path, title) if records else None


@torch.no_grad()
def validation_metrics(model, tokenizer, val_examples, val_rows, cfg, accelerator):
    """Validation loss on packed validation rows, plus the eval stage's accuracy on a sample."""
    model.eval()
    out = {}
    if val_examples:
        rows = pack(val_examples, cfg.seq_len, seed=0)
        total, count = 0.0, 0
        for i in range(0, len(rows), 32):
            ids, labels, pos, _ = collate(val_examples, rows[i:i + 32], cfg.seq_len, pad_token_id(tokenizer))
            loss_sum, n = token_losses(model, ids, labels, pos)
            total, count = total + loss_sum.item(), count + n
        out["val_loss"] = round(total / max(count, 1), 5)
    if cfg.eval_samples and len(val_rows) and accelerator.is_main_process:
        sample = [val_rows[i] for i in range(min(cfg.eval_samples, len(val_rows)))]
        out["val_accuracy"] = val_accuracy(accelerator.unwrap_model(model), tokenizer, sample)
    return out


ACCURACY_BATCH = 64


@torch.no_grad()
def val_accuracy(model, tokenizer, rows) -> float:
    """Share of rows whose greedy final answer is right: the eval stage's zero-shot chat prompt and
    token budget (sized from the question, cut to the context), scored by the final answer alone
    (verdict.answer_right, eval's `correct`). 4 decimals. The engine batches the rows as eval does
    (engine.plan_batches): the same rows share a batch and its padding, so the numbers match
    `reasonlm eval` on these rows exactly."""
    examples = [Example.from_row(r) for r in rows]
    prompts = [encode_prompt(tokenizer, prompt_messages(e.question)) for e in examples]
    engine = engine_for(model, tokenizer)
    budgets = [answer_budget(tokenizer, e.question, len(p), engine.context_size) for e, p in zip(examples, prompts)]
    outputs = engine.generate(prompts, SamplingParams(max_new_tokens=budgets, batch_size=ACCURACY_BATCH))
    correct = sum(answer_right(parse_completion(tokenizer.decode(ids, skip_special_tokens=True)), ex)
                  for ex, ids in zip(examples, outputs))
    return round(correct / max(1, len(examples)), 4)


# --- the stage -------------------------------------------------------------------------------
def check_launch(accelerator) -> None:
    """Refuse a launch whose sharding Accelerate dropped without a word.

    `accelerate launch --config_file recipes/accelerate/fsdp.yaml` on processes without GPUs
    starts them with ACCELERATE_USE_FSDP=true, but Accelerate 1.x engages FSDP only for GPU-like
    process groups: on the CPU (gloo) it runs plain DDP instead, so the run would not be what its
    config says. (torch's FSDP2 itself does run on gloo; Accelerate does not wire it up there.)"""
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and accelerator.distributed_type != DistributedType.FSDP:
        raise TrainError(f"the launch config asks for FSDP, but Accelerate runs FSDP only on GPUs and this run is "
                         f"{accelerator.distributed_type.value} on {accelerator.device}; on CPUs use "
                         f"recipes/accelerate/cpu-2proc.yaml (DDP over gloo)")


def run(recipe: Recipe, name: str | None = None) -> str:
    """Fine-tune the recipe's base model (config.base_model, or train.model) on train.data (default
    <out_dir>/data)'s train split, with recipe.threads threads on recipe.device.

    Writes <out_dir>/<name>/{adapter or model, best, checkpoint-*, metrics.jsonl, loss.png, config.yaml}
    (`name`: default 'train', or DIRECT_RUN for train.format=direct); the logged metrics also go to
    the trackers in train.report_to (reasonlm/tracking.py).
    """
    load_plugins(recipe.all_task_files)
    cfg = dataclasses.replace(recipe.train, model=base_model(recipe, recipe.train.model))
    name = name or ("train" if cfg.format == "cot" else DIRECT_RUN)
    threads, device = recipe.threads, recipe.device
    paths = RunPaths(recipe.out_dir)
    run_dir = paths.train_run(name)
    # cpu=True on the CPU: processes started by torchrun then form a gloo group there. Otherwise
    # Accelerate takes the GPU (each process its own) or, on a Mac, MPS.
    accelerator = tracked_accelerator(cfg.report_to, run_dir, cpu=resolve_device(device).type == "cpu",
                                      mixed_precision=cfg.mixed_precision if cfg.mixed_precision != "no" else None)
    check_launch(accelerator)
    set_threads(threads, accelerator.num_processes)
    set_seed(cfg.seed)
    model_name = cfg.model
    data_dir = cfg.data or paths.data
    dataset = read_dataset(data_dir)
    if "train" not in dataset or len(dataset["train"]) == 0:
        raise TrainError(f"dataset {data_dir} has no training examples")
    if cfg.load_in_4bit and not torch.cuda.is_available():
        raise TrainError("QLoRA (train.load_in_4bit) needs a CUDA GPU and bitsandbytes; "
                         "on CPU use train.mixed_precision=bf16 or fp32")
    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, quantize_4bit=cfg.load_in_4bit)
    rows = model.get_input_embeddings().weight.shape[0]
    new_tokens = fit_vocab(model, tokenizer)  # e.g. the ChatML tokens a real model's tokenizer lacked
    if new_tokens:
        resized = model.get_input_embeddings().weight.shape[0]
        accelerator.print(f"train[{name}]: the tokenizer has {new_tokens} token(s) without a trained embedding row"
                          + (f"; embeddings resized from {rows} to {resized} rows" if resized != rows else ""))
    if cfg.full_finetune:
        model.requires_grad_(True)
    else:
        save = modules_to_save(cfg, model, new_tokens)
        model = attach_lora(model, cfg, save)
        if save:
            accelerator.print(f"train[{name}]: training in full and saving with the adapter: {', '.join(save)}")
    total, trainable = count_parameters(model)
    accelerator.print(f"train[{name}]: {model_name} {total/1e6:.2f}M params, {trainable/1e6:.3f}M trainable, "
                      f"format={cfg.format}, {accelerator.num_processes} process(es)")
    final = paths.weights(name, cfg.full_finetune)
    main = accelerator.is_main_process
    origin = made_from(cfg, recipe.out_dir, {"data": data_dir, "base": model_name})  # what its checkpoints record
    # one run per run directory; a full disk anywhere in it (metrics, checkpoints, weights) is one line
    with outputs.lock(run_dir, enabled=main), outputs.writing(run_dir):
        if main:
            outputs.claim(run_dir, "train", RUN_FILES)  # a folder of the user's: stop now, writing nothing
            check_resumable(run_dir, origin, cfg.resume, FRESH)  # another run's checkpoints: the same
            for path in (final, os.path.join(run_dir, "best")):  # someone else's folder: stop now, not after training
                outputs.check_replaceable(path, "train")
            save_resolved(cfg, run_dir)
        val_rows = dataset["validation"] if "validation" in dataset else []
        start_tracking(accelerator, run_dir, cfg)
        try:
            stats = fit(model, tokenizer, dataset["train"], val_rows, cfg, run_dir, accelerator, origin)
        finally:
            finish_tracking(accelerator)
        save_weights(accelerator, model, tokenizer, final, cfg, data_dir=data_dir)
        if main:
            outputs.atomic_write(os.path.join(run_dir, "train_stats.json"), json.dumps(stats, indent=1))
        accelerator.wait_for_everyone()
    accelerator.print(f"train[{name}]: wrote {final} in {stats['train_seconds']}s ({stats['tokens_per_s']:,.0f} tokens/s)")
    return final
