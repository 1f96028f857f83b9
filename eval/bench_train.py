"""Training throughput: reasonlm's Accelerate loop vs TRL's SFTTrainer, same model, data, tokens and steps.

    python eval/bench_train.py                       # the benchmark: --mode both --steps 16 --rows 16, TRL LoRA
                                                     # in 3 variants (~3-5 min on 2 quiet cores)
    python eval/bench_train.py --steps 2 --rows 4 --hidden 32 --layers 2 --heads 4 --skip-trl --mode lora  # smoke
    python eval/bench_train.py --profile 3 --mode lora     # where each side's time goes (torch.profiler, loop only)
    python eval/bench_train.py --ideas 8 --skip-trl        # speed-up ideas on reasonlm's own step
    python eval/bench_train.py --base out/tiny-cpu/base    # a trained base instead of a random tiny Llama

Numbers are only meaningful on a quiet machine: a second busy process on 2 cores slows every side
several-fold and unevenly.

What it does, in one run on this machine:
  1. data: `reasonlm.data.run` with one-digit + - * chains (recipes/tiny-cpu.yaml's task) into --out;
     base: --base PATH, or a tiny Llama (tokenizer trained here + `model.build_tiny`, random weights).
  2. peak: the CPU's fp32 matmul FLOP/s (torch.mm of 2048x2048, same thread count), for MFU.
  3. one fresh subprocess per side (clean peak RSS; OMP/MKL threads and torch.set_num_threads equal):
       reasonlm-lora / reasonlm-full  `reasonlm.train.run(Recipe(train=TrainConfig(...)))`, packed rows of --seq tokens,
                                      --rows rows per step (with --packed-attention the rows' examples
                                      run as one sequence without padding); tokens/s from its
                                      metrics.jsonl (computed before the final validation pass, so that
                                      is not counted). --processes N: N DDP processes (gloo) sharing
                                      --threads, same global batch; the peak is still measured with all
                                      --threads in one process (the same cores).
       trl-lora / trl-full            `trl.SFTTrainer` with `SFTConfig(packing=True, max_length=--seq,
                                      per_device_train_batch_size=--rows, ...)` on prompt/completion rows
                                      rendered with reasonlm's renderer; the worker checks that TRL's
                                      tokenised examples are exactly reasonlm's (same ids, same loss mask).
     Both: same LoRA config (reasonlm.model.lora_config), lr, AdamW(0.9, 0.98), no weight decay, grad
     clip 1.0, fp32, seed 0, and the same warmup + cosine schedule: TRL's trainer gets reasonlm's
     train.lr_lambda (HF's cosine warmup starts at lr 0, reasonlm's at lr/warmup).
  4. every side's saved weights are scored by one function (`val_loss`): mean loss per completion
     token over the first --val-n validation problems, each run alone (no packing, no padding).
  5. a markdown table: side | steps | non-padding tokens/s | peak RSS | final val loss | wall s | ...,
     the reasonlm/TRL ratio per mode, and MFU.

Tokens: "non-padding tokens" are the example tokens a step runs (prompt + completion, every token that
has attention), excluding pad tokens. reasonlm pads each packed row to --seq; TRL's BFD packing is
padding-free, so it has no pads at all. "train s" is the training loop only (reasonlm: fit's loop up
to the last step's log line; TRL: on_train_begin to on_train_end); model loading, tokenisation,
packing, saving and the shared evaluation are in "wall s" (the whole subprocess).

TRL variants (--trl-variants, comma-separated):
  default   TRL 1.16's defaults for everything not set above: packing_strategy="bfd" (which
            forces padding_free=True) and gradient_checkpointing=True (SFTConfig's default).
  nogc      the same with gradient_checkpointing=False.
  row       gradient_checkpointing=False, per_device_train_batch_size=1 and gradient_accumulation_steps
            =--rows: the same rows x seq tokens per optimizer step, but each forward sees one packed row.
  nopack    gradient_checkpointing=False, packing=False: padded batches (attention mask) of as many whole
            examples as --rows packed rows hold on average (rows*seq / mean example length).
  Why they differ: padding-free collation concatenates the whole per-device batch into ONE sequence
  (shape 1 x rows*seq) and relies on FlashAttention varlen kernels to keep examples apart. On CPU
  (sdpa), transformers derives a block-diagonal mask from the position-id resets over the whole
  flattened length, so attention costs O((rows*seq)^2) per step instead of O(rows*seq^2). Gradient
  checkpointing recomputes the forward in the backward pass (less peak RSS, more time).

MFU ("model FLOPs utilisation") = useful training FLOP/s / measured peak matmul FLOP/s, with
  N      = weights of every nn.Linear of the base model (incl. the LM head; the embedding lookup is free)
  full   6 N per token;   LoRA   4 N + 6 N_lora per token (frozen weights: forward 2N + activation
         gradients 2N; the adapters: forward, activation and weight gradients, 2 N_lora each)
  attn   + 6 L d E[l^2]/E[l] per token: PaLM's 12 L d T (appendix B) halved for causal masking, with
         T = each example's own length (packed examples do not attend to each other), token-weighted.
  Extra work a side does (gradient-checkpoint recompute, attention across the whole flattened batch,
  pad tokens) is not useful FLOPs, so it lowers that side's MFU instead of raising it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TASK = {"name": "arithmetic", "args": {"digits": 1, "ops": "+-*", "min_value": 0, "max_value": 99, "trivial_ops": False,
                                            "step_format": "equation+rewrite"}}  # tiny-cpu.yaml's chains
RESULT = "BENCH_RESULT "


# --- shared pieces (parent and workers) ----------------------------------------------------------
def encoded_train(tokenizer, rows, seq_len):
    """reasonlm's own tokenisation of the train split: [(prompt ids, completion ids)], too-long dropped."""
    from reasonlm.answer import encode_example, render_completion
    out = []
    for r in rows:
        p, c = encode_example(tokenizer, r["question"], render_completion(list(r["steps"]), r["answer"]))
        if len(p) + len(c) <= seq_len:
            out.append((p, c))
    return out


def val_loss(model_dir: str, adapter: str | None, data_dir: str, n: int, seq_len: int) -> float:
    """THE evaluation both sides get: mean next-token loss per completion token (steps, answer line and
    end-of-turn) over the first n validation problems, rendered with answer.encode_example, each example
    run alone (batch 1, no padding, no packing), fp32."""
    import torch
    import torch.nn.functional as F

    from reasonlm.example import read_dataset
    from reasonlm.answer import encode_example, render_completion
    from reasonlm.model import load_adapter

    model, tok = load_adapter(model_dir, adapter)
    rows = read_dataset(data_dir)["validation"]
    total, count = 0.0, 0
    with torch.no_grad():
        for r in rows.select(range(min(n, len(rows)))):
            p, c = encode_example(tok, r["question"], render_completion(list(r["steps"]), r["answer"]))
            ids = p + c
            if len(ids) > seq_len:
                continue
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
            # position i predicts token i+1; completion tokens are ids[len(p):]
            pred = logits[len(p) - 1:len(ids) - 1]
            total += F.cross_entropy(pred, torch.tensor(c), reduction="sum").item()
            count += len(c)
    return total / max(count, 1)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def set_threads(n: int):
    import torch
    torch.set_num_threads(n)


def emit(result: dict):
    print(RESULT + json.dumps(result), flush=True)


# --- workers (each runs in a fresh process) ------------------------------------------------------
def worker_peak(spec):
    """Peak fp32 matmul FLOP/s: best of 5 rounds of 3 torch.mm(2048x2048)."""
    import torch
    set_threads(spec["threads"])
    n = spec.get("peak_n", 2048)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        torch.mm(a, b)
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b)
        best = max(best, 3 * 2 * n ** 3 / (time.perf_counter() - t0))
    emit({"peak_flops": best})


def reasonlm_cfg(spec, steps):
    from reasonlm.config import TrainConfig
    return TrainConfig(model=spec["base"], data=spec["data"], format="cot", full_finetune=spec["mode"] == "full",
                       lora_r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                       target_modules="all-linear", steps=steps, batch_tokens=spec["rows"] * spec["seq"],
                       seq_len=spec["seq"], grad_accum=1, lr=spec["lr"], schedule="cosine",
                       warmup_steps=spec["warmup"], weight_decay=0.0, grad_clip=1.0, mixed_precision="no",
                       compile=spec.get("compile", False), position_jitter=spec.get("jitter", 0), packed_attention=spec.get("packed_attention", False), eval_every=0, eval_samples=0, save_every=0, resume="never", log_every=steps, seed=0)


def reasonlm_tokens(spec, cfg) -> int:
    """Non-padding tokens reasonlm's loop ran: its own encode_rows + Batches, replayed step by step."""
    from reasonlm.example import read_dataset
    from reasonlm import train
    from reasonlm.model import load_tokenizer
    examples = train.encode_rows(read_dataset(spec["data"])["train"], load_tokenizer(spec["base"]), cfg.format,
                                 cfg.seq_len, cfg.too_long)
    batches = train.Batches(examples, cfg.seq_len, cfg.batch_tokens // cfg.seq_len, cfg.seed)
    return sum(len(examples[i][0]) for step in range(cfg.steps) for row in batches.rows_for_step(step) for i in row)


def worker_reasonlm(spec):
    from reasonlm import train
    from reasonlm.config import Recipe
    set_threads(spec["threads"])
    name = spec["side"]
    run_dir = os.path.join(spec["out"], name)
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = reasonlm_cfg(spec, spec["steps"])
    final = train.run(Recipe(out_dir=spec["out"], threads=spec["threads"], train=cfg), name=name)
    if int(os.environ.get("RANK", "0")):  # --processes: rank 0 reports (its own peak RSS)
        return
    rss = peak_rss_mb()
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    # tokens_per_s is taken before the final validation pass; it counts non-padding tokens (train.fit adds
    # len(input_ids) of every packed example). The exact token count is replayed from the same batches.
    # with --compile the first step holds the compile time: the rate is the one after that step
    tokens = reasonlm_tokens(spec, cfg)
    tok_s = last.get("tokens_per_s_after_first_step", last["tokens_per_s"])
    secs = tokens / tok_s
    t0 = time.time()
    if spec["mode"] == "full":
        vl = val_loss(final, None, spec["data"], spec["val_n"], spec["seq"])
    else:
        vl = val_loss(spec["base"], final, spec["data"], spec["val_n"], spec["seq"])
    emit({"side": name, "steps": last["step"], "tokens": tokens, "tokens_per_s": tok_s,
          "fill": tokens / (cfg.steps * spec["rows"] * spec["seq"]),
          "train_s": secs, "rss_mb": rss, "val_loss": vl, "own_val_loss": last.get("val_loss"),
          "train_loss": last["loss"], "eval_s": time.time() - t0,
          # packed attention runs each step's examples as one row without padding: (1, their tokens)
          "batch_shape": [1, f"~{tokens // cfg.steps}"] if cfg.packed_attention else [spec["rows"], spec["seq"]]})


def trl_trainer(spec, steps, variant, out_dir):
    """(trainer, dataset rows) for TRL: prompt/completion text rendered with reasonlm's renderer."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from reasonlm.example import read_dataset
    from reasonlm.answer import end_of_turn, prompt_messages, render_completion, render_prompt
    from reasonlm.model import load_model, load_tokenizer, lora_config

    tok = load_tokenizer(spec["base"])
    model = load_model(spec["base"])
    rows = read_dataset(spec["data"])["train"]
    keep = encoded_train(tok, rows, spec["seq"])  # drop what reasonlm drops (too long)
    eot = end_of_turn(tok)
    records = []
    for r in rows:
        completion = render_completion(list(r["steps"]), r["answer"])
        records.append({"prompt": render_prompt(tok, prompt_messages(r["question"])), "completion": completion + eot})
    if len(keep) != len(records):  # some were too long for seq: drop the same ones
        lens = [len(p) + len(c) for p, c in encoded_train(tok, rows, 10 ** 9)]
        records = [rec for rec, n in zip(records, lens) if n <= spec["seq"]]
    full = spec["mode"] == "full"
    if variant == "row":  # one packed row per forward, accumulated to --rows rows per step
        batch, accum = 1, spec["rows"]
    elif variant == "nopack":  # as many whole examples as --rows packed rows hold, padded per batch
        batch, accum = max(1, round(spec["rows"] * spec["seq"] / (sum(len(p) + len(c) for p, c in keep) / len(keep)))), 1
    else:
        batch, accum = spec["rows"], 1
    args = SFTConfig(
        output_dir=out_dir, use_cpu=True, bf16=False, fp16=False, seed=0, data_seed=0,
        packing=variant != "nopack", packing_strategy="bfd", padding_free=False, max_length=spec["seq"],
        per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
        gradient_checkpointing=variant == "default",
        max_steps=steps, learning_rate=spec["lr"], lr_scheduler_type="cosine", warmup_steps=spec["warmup"],
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.98, max_grad_norm=1.0, optim="adamw_torch",
        completion_only_loss=True, logging_steps=1, report_to=[], save_strategy="no", eval_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0)
    peft_config = None
    if not full:
        peft_config = lora_config(reasonlm_cfg(spec, steps), model)
    else:
        model.requires_grad_(True)
    lr_cfg = reasonlm_cfg(spec, steps)

    class Trainer(SFTTrainer):
        # reasonlm's exact schedule: HF's cosine warmup starts at lr 0 (step/warmup), reasonlm's at
        # lr/warmup ((step+1)/warmup); over a 20-step benchmark that one step shows in the val loss.
        def create_scheduler(self, num_training_steps, optimizer=None):
            if self.lr_scheduler is None:
                from reasonlm.train import lr_lambda
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, lr_lambda(lr_cfg))
                self._created_lr_scheduler = True
            return self.lr_scheduler

    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok,
                      peft_config=peft_config)
    return trainer, tok, keep


def check_same_tokens(trainer, keep):
    """TRL's packed dataset, split back into examples, must hold exactly reasonlm's tokens and loss mask."""
    from collections import Counter
    ds = trainer.train_dataset
    theirs = Counter()
    for ex in ds:
        ids, labels, t = ex["input_ids"], ex["labels"], 0
        for n in ex.get("seq_lengths") or [len(ids)]:
            sup = sum(1 for x in labels[t:t + n] if x != -100)
            theirs[(tuple(ids[t:t + n]), sup)] += 1
            t += n
    mine = Counter((tuple(p + c), len(c)) for p, c in keep)
    return theirs == mine, sum(theirs.values()), sum(mine.values())


def worker_trl(spec):
    import torch
    set_threads(spec["threads"])
    variant = spec["variant"]
    out_dir = os.path.join(spec["out"], spec["side"])
    shutil.rmtree(out_dir, ignore_errors=True)
    trainer, tok, keep = trl_trainer(spec, spec["steps"], variant, out_dir)
    same, n_theirs, n_mine = check_same_tokens(trainer, keep)
    from transformers import TrainerCallback
    seen = {}

    class Clock(TrainerCallback):  # the loop only: after optimizer/dataloader setup, like reasonlm's t_start
        def on_train_begin(self, *a, **k):
            seen["begin"] = time.time()

        def on_train_end(self, *a, **k):
            seen["end"] = time.time()

    def first_forward(module, inputs, output):
        if "shape" not in seen:
            seen["shape"], seen["threads"] = list(inputs[0].shape), torch.get_num_threads()

    trainer.add_callback(Clock())
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    handle = base.get_input_embeddings().register_forward_hook(first_forward)
    torch.manual_seed(0)
    t0 = time.time()
    trainer.train()
    call_s = time.time() - t0
    secs = seen["end"] - seen["begin"]
    handle.remove()
    rss = peak_rss_mb()
    logs = [h for h in trainer.state.log_history if "num_tokens" in h]
    tokens = logs[-1]["num_tokens"] if logs else float("nan")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    final_dir = os.path.join(out_dir, "final")
    trainer.save_model(final_dir)
    t1 = time.time()
    if spec["mode"] == "full":
        vl = val_loss(final_dir, None, spec["data"], spec["val_n"], spec["seq"])
    else:
        vl = val_loss(spec["base"], final_dir, spec["data"], spec["val_n"], spec["seq"])
    emit({"side": spec["side"], "steps": trainer.state.global_step, "tokens": tokens, "tokens_per_s": tokens / secs,
          "fill": tokens / (trainer.state.global_step * spec["rows"] * spec["seq"]),
          "train_s": secs, "rss_mb": rss, "val_loss": vl, "train_loss": losses[-1] if losses else None,
          "same_tokens": same, "examples_trl": n_theirs, "examples_reasonlm": n_mine,
          "batch_shape": seen.get("shape"), "threads_in_loop": seen.get("threads"), "train_call_s": call_s,
          "eval_s": time.time() - t1, "padding_free": bool(getattr(trainer, "padding_free", False)),
          "gradient_checkpointing": bool(trainer.args.gradient_checkpointing)})


def reasonlm_fit(spec, steps):
    """train.run's setup, then a callable running train.fit alone (no validation, no saving): for profiling."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from reasonlm.example import read_dataset
    from reasonlm import train
    from reasonlm.model import attach_lora, load_model, load_tokenizer
    cfg = reasonlm_cfg(spec, steps)
    accelerator = Accelerator()
    set_seed(0)
    tok, model = load_tokenizer(spec["base"]), load_model(spec["base"])
    model = model.requires_grad_(True) if cfg.full_finetune else attach_lora(model, cfg)
    rows = read_dataset(spec["data"])["train"]
    run_dir = os.path.join(spec["out"], spec["side"])
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    return lambda: train.fit(model, tok, rows, [], cfg, run_dir, accelerator)


OP_GROUPS = [  # (group, exact aten op names, substrings)
    ("attention (sdpa forward + backward)", (), ("scaled_dot_product",)),
    ("matmul (mm/addmm/bmm)", ("aten::mm", "aten::addmm", "aten::bmm"), ()),
    ("mask building (where/eq/le/lt/ge/bitwise_and/index)",
     ("aten::where", "aten::eq", "aten::le", "aten::lt", "aten::ge", "aten::bitwise_and", "aten::index"), ()),
    ("elementwise (mul/add/sub/div/silu/pow/rsqrt/mean/neg/cat/sum, in place too)",
     tuple(f"aten::{o}{t}" for o in ("mul", "add", "sub", "div", "silu", "silu_backward", "pow", "rsqrt", "mean",
                                      "neg", "cat", "sum", "addcmul", "addcdiv", "lerp", "sqrt") for t in ("", "_")), ()),
]


def op_group(key: str):
    for name, exact, subs in OP_GROUPS:
        if key in exact or any(x in key for x in subs):
            return name
    return None


def worker_profile(spec):
    """K steps under torch.profiler: top ops by self CPU time, grouped, and the time outside any op (Python,
    framework). TRL: trainer.train() (tokenising and packing happened in its constructor); reasonlm:
    train.fit, which tokenises and packs first (well under a second for the default data)."""
    from torch.profiler import ProfilerActivity, profile
    set_threads(spec["threads"])
    steps = spec["steps"]
    if spec["target"] == "trl":
        trainer, _, _ = trl_trainer(spec, steps, spec["variant"], os.path.join(spec["out"], spec["side"]))
        run = trainer.train
    else:
        run = reasonlm_fit(spec, steps)
    t0 = time.time()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        run()
    wall = time.time() - t0
    avg = prof.key_averages()
    rows = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)
    total_self = sum(e.self_cpu_time_total for e in avg) / 1e6
    top = [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in rows[:spec.get("top", 12)]]
    groups = {name: sum(e.self_cpu_time_total for e in avg if op_group(e.key) == name) / 1e6 for name, _, _ in OP_GROUPS}
    emit({"side": spec["side"], "profile_wall_s": wall, "ops_self_s": total_self, "top": top, "groups": groups})


IDEAS = {  # name: (AdamW variant, bf16 autocast, torch.compile)
    "fp32, for-loop AdamW (train.py today)": ("loop", False, False),
    "fp32, foreach AdamW": ("foreach", False, False),
    "fp32, fused AdamW": ("fused", False, False),
    "bf16 autocast, fused AdamW": ("fused", True, False),
    "torch.compile, fused AdamW": ("fused", False, True),
    "torch.compile + bf16 autocast, fused AdamW": ("fused", True, True),
}


def worker_ideas(spec):
    """reasonlm's own step (collate -> token_losses -> backward -> clip -> AdamW) on the same packed batches
    for each idea in IDEAS; the variants take turns step by step so a busy machine slows all alike."""
    import statistics

    import torch

    from reasonlm.example import read_dataset
    from reasonlm import packing, train
    from reasonlm.model import attach_lora, load_model, load_tokenizer
    set_threads(spec["threads"])
    tok = load_tokenizer(spec["base"])
    cfg = reasonlm_cfg(spec, spec["steps"])
    examples = train.encode_rows(read_dataset(spec["data"])["train"], tok, "cot", cfg.seq_len)
    batches = train.Batches(examples, cfg.seq_len, spec["rows"], 0)
    pad = tok.pad_token_id or 0
    steps = [packing.collate(examples, batches.rows_for_step(k), cfg.seq_len, pad) for k in range(spec["steps"])]
    tokens = [sum(len(examples[i][0]) for row in batches.rows_for_step(k) for i in row) for k in range(spec["steps"])]
    runs = {}
    for name in spec["ideas"]:
        opt_kind, bf16, compiled = IDEAS[name]
        torch.manual_seed(0)
        model = load_model(spec["base"])
        model = model.requires_grad_(True) if spec["mode"] == "full" else attach_lora(model, cfg)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        kw = {"foreach": False} if opt_kind == "loop" else {"foreach": True} if opt_kind == "foreach" else {"fused": True}
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0, **kw)
        runs[name] = {"model": torch.compile(model) if compiled else model, "params": params, "opt": opt,
                      "bf16": bf16, "times": [], "losses": []}
    for k, (ids, labels, pos, mask) in enumerate(steps):
        n_sup = int((labels[:, 1:] != packing.IGNORE).sum())
        for name, r in runs.items():
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=r["bf16"]):
                loss_sum, _ = train.token_losses(r["model"], ids, labels, pos, mask)
            (loss_sum / n_sup).backward()
            torch.nn.utils.clip_grad_norm_(r["params"], 1.0)
            r["opt"].step()
            r["opt"].zero_grad(set_to_none=True)
            r["times"].append(time.perf_counter() - t0)
            r["losses"].append(loss_sum.item() / n_sup)
    warm = spec.get("warm", 2)
    out = []
    for name, r in runs.items():
        steady = statistics.median(r["times"][warm:])
        out.append({"idea": name, "first_s": r["times"][0], "step_s": steady,
                    "tokens_per_s": statistics.mean(tokens[warm:]) / steady, "last_loss": r["losses"][-1]})
    emit({"side": spec["side"], "ideas": out})


WORKERS = {"peak": worker_peak, "reasonlm": worker_reasonlm, "trl": worker_trl, "profile": worker_profile,
           "ideas": worker_ideas}


# --- parent --------------------------------------------------------------------------------------
def run_worker(spec, threads, log_dir, processes=1):
    """One worker in a fresh process; with processes > 1, that many DDP processes (torchrun, gloo)
    sharing the threads, and rank 0's result."""
    if processes > 1:
        threads = max(1, threads // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}
    log = os.path.join(log_dir, f"{spec['side']}.log")
    t0 = time.time()
    with open(log, "w") as f:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] \
            if processes > 1 else [sys.executable]
        proc = subprocess.run([*launcher, os.path.abspath(__file__), "--worker", json.dumps({**spec, "threads": threads})],
                              stdout=subprocess.PIPE, stderr=f, text=True, env=env)
    wall = time.time() - t0
    with open(log, "a") as f:
        f.write(proc.stdout)
    results = [json.loads(line[len(RESULT):]) for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not results:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"error: worker {spec['side']} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return {**results[-1], "wall_s": wall, "mode": spec.get("mode")}


def make_data(args, out):
    import datasets

    from reasonlm import data
    from reasonlm.config import DataConfig, Recipe
    datasets.disable_progress_bars()
    # enough problems for one epoch of the run (~40 tokens each), at least 500
    n_train = max(500, math.ceil(args.steps * args.rows * args.seq / 40))
    tasks, steps = [TASK], [1, 6]
    if args.corpus == "base":  # tiny-cpu.yaml's pretraining mix: 1-2-step chains + single steps of long expressions
        step = {"name": "arithmetic_step", "weight": 2.0, "steps": [1, 1],
                "args": {"length": [2, 12], **{k: v for k, v in TASK["args"].items() if k != "step_format"}}}
        tasks, steps = [TASK, step], [1, 2]
    cfg = DataConfig(tasks=tasks, train_steps=steps, ood_steps=[7, 8], n_train=n_train, n_validation=args.val_n,
                     n_test_per_steps=5, n_base=200, seed=0, workers=1)
    return data.run(Recipe(out_dir=out, data=cfg))


def make_base(args, out, data_dir):
    from reasonlm.example import read_dataset
    from reasonlm.model import build_tiny, train_tokenizer
    ds = read_dataset(data_dir)
    texts = ["user", "assistant", "system"]
    for split in ("base", "train"):
        for r in ds[split].select(range(min(5000, len(ds[split])))):
            texts += [r["question"], "\n".join(r["steps"]), r["answer"]]
    tok = train_tokenizer(texts, args.vocab)
    model = build_tiny(tok, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                       intermediate_size=4 * args.hidden, max_position=max(512, args.seq), seed=0)
    path = os.path.join(out, "base")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def flops_per_token(args, base, data_dir):
    """Useful training FLOPs per token for full and LoRA fine-tuning (see the module docstring)."""
    import torch

    from reasonlm.example import read_dataset
    from reasonlm.model import attach_lora, load_model, load_tokenizer
    tok = load_tokenizer(base)
    model = load_model(base)
    cfgm = model.config
    n_mm = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    spec = {"base": base, "data": data_dir, "mode": "lora", "lora_r": args.lora_r, "lora_alpha": args.lora_alpha,
            "rows": args.rows, "seq": args.seq, "lr": args.lr, "warmup": args.warmup}
    n_lora = sum(p.numel() for p in attach_lora(model, reasonlm_cfg(spec, 1)).parameters() if p.requires_grad)
    lens = [len(p) + len(c) for p, c in encoded_train(tok, read_dataset(data_dir)["train"], args.seq)]
    l_eff = sum(n * n for n in lens) / sum(lens)  # token-weighted mean example length
    d_attn = cfgm.num_attention_heads * getattr(cfgm, "head_dim", cfgm.hidden_size // cfgm.num_attention_heads)
    attn = 6 * cfgm.num_hidden_layers * d_attn * l_eff
    return {"n_params": sum(p.numel() for p in load_model(base).parameters()), "n_matmul": n_mm, "n_lora": n_lora,
            "attn": attn, "l_eff": l_eff, "mean_len": sum(lens) / len(lens), "examples": len(lens),
            "full": 6 * n_mm + attn, "lora": 4 * n_mm + 6 * n_lora + attn}


def fmt_row(r, fl, peak):
    mode = r["mode"]
    mfu = r["tokens_per_s"] * fl[mode] / peak if peak else float("nan")
    shape = "x".join(str(x) for x in r.get("batch_shape") or []) or "?"
    return (f"| {r['side']} | {r['steps']} | {r['tokens_per_s']:,.0f} | {r['rss_mb']:,.0f} | {r['val_loss']:.4f} "
            f"| {r['wall_s']:.1f} | {r['train_s']:.1f} | {r['tokens']:,.0f} ({100 * r['fill']:.0f}%) | {shape} | {100 * mfu:.1f}% |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["full", "lora", "both"], default="both", help="full fine-tuning, LoRA, or both")
    p.add_argument("--steps", type=int, default=16, help="optimizer steps per side")
    p.add_argument("--rows", type=int, default=16, help="packed rows of --seq tokens per optimizer step")
    p.add_argument("--seq", type=int, default=192, help="sequence length (TRL's max_length)")
    p.add_argument("--threads", type=int, default=0, help="torch/OMP threads per worker (0 = all cores)")
    p.add_argument("--skip-trl", action="store_true", help="only the reasonlm side(s)")
    p.add_argument("--compile", action="store_true", help="reasonlm side with train.compile (rate after the first step)")
    p.add_argument("--corpus", choices=["train", "base"], default="train",
                   help="train: 1-6-step chains (fine-tuning data); base: tiny-cpu.yaml's pretraining mix (1-2-step "
                        "chains and single steps of 2-12-op expressions, ~28 tokens each), i.e. the tiny model's full training")
    p.add_argument("--jitter", type=int, default=0, help="reasonlm side's position_jitter (tiny-cpu.yaml: base 16)")
    p.add_argument("--packed-attention", action="store_true",
                   help="reasonlm side with train.packed_attention (examples grouped by length, no block mask)")
    p.add_argument("--processes", type=int, default=1,
                   help="reasonlm side as N DDP processes (torchrun, gloo) sharing --threads; same global batch")
    p.add_argument("--trl-mode", choices=["auto", "lora", "full", "both"], default="auto",
                   help="which fine-tuning modes TRL runs (auto: LoRA if --mode includes it, else full)")
    p.add_argument("--trl-variants", default="default,row,nopack",
                   help="comma-separated: default (bfd padding-free, gradient checkpointing on = TRL's defaults), "
                        "nogc (checkpointing off), row (checkpointing off, 1 packed row per forward, accumulation), "
                        "nopack (checkpointing off, no packing: padded batches of whole examples)")
    p.add_argument("--profile", type=int, default=0, metavar="K",
                   help="instead of the benchmark: profile K steps of each side and print the top ops")
    p.add_argument("--ideas", type=int, default=0, metavar="K",
                   help="instead of the benchmark: K steps of reasonlm's own step under each speed-up idea "
                        "(fused/foreach AdamW, bf16 autocast, torch.compile), taking turns step by step")
    p.add_argument("--idea-list", default="",
                   help="comma-separated indices into the ideas list (default: all), e.g. 0,2,3")
    p.add_argument("--base", default="", help="base model dir (default: a random tiny Llama built here)")
    p.add_argument("--hidden", type=int, default=128, help="tiny base width (without --base)")
    p.add_argument("--layers", type=int, default=4, help="tiny base layers")
    p.add_argument("--heads", type=int, default=8, help="tiny base heads")
    p.add_argument("--vocab", type=int, default=320, help="tiny base tokenizer vocabulary")
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--lora-alpha", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=0, help="warmup steps (default: steps // 10)")
    p.add_argument("--val-n", type=int, default=200, help="validation problems scored by the shared val_loss")
    p.add_argument("--out", default="", help="work dir (default: a temp dir, removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        WORKERS[spec["kind"]](spec)
        return

    omp = [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if "OMP_NUM_THREADS" in os.environ else []
    cmd = omp + ["python", os.path.relpath(os.path.abspath(__file__))] + list(sys.argv[1:] if argv is None else argv)
    print("command: " + " ".join(shlex.quote(a) for a in cmd), flush=True)
    threads = args.threads or os.cpu_count() or 1
    args.warmup = args.warmup or max(1, args.steps // 10)
    variants = [v.strip() for v in args.trl_variants.split(",") if v.strip()]
    for v in variants:
        if v not in ("default", "nogc", "row", "nopack"):
            p.error(f"unknown TRL variant {v!r}")
    trl_version = ""
    if not args.skip_trl:
        try:
            import trl
            trl_version = trl.__version__
        except ImportError:
            p.error("trl is not installed (pip install 'trl>=1.0'), or pass --skip-trl")
    out = args.out or tempfile.mkdtemp(prefix="bench_train_")
    os.makedirs(out, exist_ok=True)
    log_dir = os.path.join(out, "logs")
    os.makedirs(log_dir, exist_ok=True)
    try:
        t_setup = time.time()
        import contextlib
        import io
        import warnings

        import transformers
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        warnings.filterwarnings("ignore", category=FutureWarning)
        with contextlib.redirect_stdout(io.StringIO()):
            data_dir = make_data(args, out)
        base = os.path.abspath(args.base) if args.base else make_base(args, out, data_dir)
        fl = flops_per_token(args, base, data_dir)
        import torch
        versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
        if trl_version:
            versions += f", trl {trl_version}"
        print(f"setup {time.time() - t_setup:.1f}s: base {'(random tiny) ' if not args.base else ''}{base}: "
              f"{fl['n_params'] / 1e6:.2f}M params, {fl['n_matmul'] / 1e6:.2f}M in matmuls, LoRA r={args.lora_r} "
              f"{fl['n_lora'] / 1e6:.3f}M; {fl['examples']} train examples, mean {fl['mean_len']:.1f} tokens; "
              f"{args.rows} rows x {args.seq} tokens/step, {args.steps} steps, warmup {args.warmup}, lr {args.lr}, "
              f"{threads} thread(s); {versions}", flush=True)
        common = {"base": base, "data": data_dir, "out": out, "rows": args.rows, "seq": args.seq, "lr": args.lr,
                  "warmup": args.warmup, "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "threads": threads,
                  "val_n": args.val_n, "steps": args.steps, "compile": args.compile,
                  "packed_attention": args.packed_attention, "jitter": args.jitter}
        modes = ["lora", "full"] if args.mode == "both" else [args.mode]
        trl_modes = {"auto": ["lora" if "lora" in modes else "full"], "both": ["lora", "full"]}.get(args.trl_mode,
                                                                                                    [args.trl_mode])
        sides = []
        for mode in ["lora", "full"]:
            if mode in modes:
                sides.append({**common, "kind": "reasonlm", "mode": mode, "side": f"reasonlm-{mode}"})
            if not args.skip_trl and mode in trl_modes:
                for v in variants:
                    sides.append({**common, "kind": "trl", "mode": mode, "variant": v,
                                  "side": f"trl-{mode}" + ("" if v == "default" else f"-{v}")})
        if args.ideas:
            names = list(IDEAS)
            if args.idea_list:
                names = [names[int(i)] for i in args.idea_list.split(",")]
            for mode in modes:
                r = run_worker({**common, "kind": "ideas", "mode": mode, "side": f"ideas-{mode}", "steps": args.ideas,
                                "ideas": names}, threads, log_dir)
                base_tps = r["ideas"][0]["tokens_per_s"]
                print(f"\n### reasonlm step, {mode}: {args.ideas} steps each (median after 2 warm-up steps), "
                      f"{args.rows} rows x {args.seq}, {threads} thread(s)\n\n"
                      f"| idea | tokens/s | vs first row | step s | first step s | loss at last step |\n|---|---|---|---|---|---|")
                for i in r["ideas"]:
                    print(f"| {i['idea']} | {i['tokens_per_s']:,.0f} | {i['tokens_per_s'] / base_tps:.2f}x | "
                          f"{i['step_s']:.3f} | {i['first_s']:.2f} | {i['last_loss']:.4f} |")
            return
        if args.profile:
            for s in sides:
                r = run_worker({**s, "kind": "profile", "target": s["kind"], "steps": args.profile,
                                "side": s["side"] + "-profile"}, threads, log_dir)
                w = r["profile_wall_s"]
                what = "trainer.train()" if s["kind"] == "trl" else "train.fit (incl. its tokenising and packing)"
                print(f"\n### {s['side']}: {args.profile} steps of {what} under torch.profiler, {w:.1f}s wall"
                      f"\n\n| group | self s | % of wall |\n|---|---|---|")
                for name, secs in r["groups"].items():
                    print(f"| {name} | {secs:.2f} | {100 * secs / w:.0f}% |")
                print(f"| other ops | {r['ops_self_s'] - sum(r['groups'].values()):.2f} | "
                      f"{100 * (r['ops_self_s'] - sum(r['groups'].values())) / w:.0f}% |")
                print(f"| outside ops (Python, data, framework) | {w - r['ops_self_s']:.2f} | {100 * (w - r['ops_self_s']) / w:.0f}% |")
                print("\n| top op | self s | % of wall | calls |\n|---|---|---|---|")
                for t in r["top"]:
                    print(f"| {t['op']} | {t['self_s']:.2f} | {100 * t['self_s'] / w:.0f}% | {t['calls']} |")
            return
        peak = run_worker({"kind": "peak", "side": "peak", "threads": threads}, threads, log_dir)["peak_flops"]
        print(f"peak fp32 matmul (torch.mm 2048x2048, {threads} thread(s)): {peak / 1e9:.1f} GFLOP/s; useful FLOPs/token: "
              f"full {fl['full'] / 1e6:.2f}M, LoRA {fl['lora'] / 1e6:.2f}M (attention {fl['attn'] / 1e6:.3f}M, "
              f"E[l^2]/E[l] = {fl['l_eff']:.1f})", flush=True)
        results = []
        for s in sides:
            r = run_worker(s, threads, log_dir, args.processes if s["kind"] == "reasonlm" else 1)
            results.append(r)
            extra = ""
            if "same_tokens" in r:
                extra = (f"; same tokens and loss mask as reasonlm: {'yes' if r['same_tokens'] else 'NO'} "
                         f"({r['examples_trl']} vs {r['examples_reasonlm']} examples); padding_free={r['padding_free']}, "
                         f"gradient_checkpointing={r['gradient_checkpointing']}, torch threads {r['threads_in_loop']}")
            elif r.get("own_val_loss") is not None:
                extra = f"; its own packed val_loss {r['own_val_loss']}"
            print(f"{r['side']}: {r['tokens_per_s']:,.0f} tokens/s, train loss {r['train_loss']}, "
                  f"forward input {r.get('batch_shape')}{extra}", flush=True)
        print("\n| side | steps | non-padding tokens/s | peak RSS (MB) | final val loss | wall s | train s "
              "| non-padding tokens (% of rows x seq x steps) | forward input | MFU |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            print(fmt_row(r, fl, peak))
        by = {r["side"]: r for r in results}
        print()
        for mode in modes:
            ours = by.get(f"reasonlm-{mode}")
            for v in variants:
                theirs = by.get(f"trl-{mode}" + ("" if v == "default" else f"-{v}"))
                if ours and theirs:
                    print(f"ratio reasonlm-{mode} / {theirs['side']}: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x "
                          f"non-padding tokens/s")
        for mode in modes:
            r = by.get(f"reasonlm-{mode}")
            if r:
                print(f"MFU reasonlm-{mode}: {r['tokens_per_s']:,.0f} tok/s x {fl[mode] / 1e6:.2f} MFLOP/tok = "
                      f"{r['tokens_per_s'] * fl[mode] / 1e9:.2f} GFLOP/s of {peak / 1e9:.1f} peak = "
                      f"{100 * r['tokens_per_s'] * fl[mode] / peak:.1f}%")
    finally:
        if not args.out and not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        elif args.keep or args.out:
            print(f"work dir: {out}")


if __name__ == "__main__":
    main()
