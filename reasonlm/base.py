"""Base stage: get a base model that knows the primitives the chains are built from.

    reasonlm base recipes/tiny-cpu.yaml          -> <out_dir>/base/ (model + tokenizer)

With `base.model: tiny` (the offline default) it trains a byte-level BPE tokenizer on the
data, builds a small Llama-style decoder with random weights, and pretrains all of its weights
with the training stage's own loop on the data stage's `base` split: short problems in the
chains' own notation (copy two operands from the question, combine them, give the answer).
The default recipe also shows it two-step chains (`data.base_steps: [1, 2]`), so the base has
carried a result from one line to the next once, and single steps of long expressions
(`arithmetic_step`: reduce one operation, copy the rest), so it can copy an expression of any
length; chains of 3 to 8 steps, and the direct-answer format, are what fine-tuning then
teaches. A base that knows nothing of the primitives leaves LoRA nothing to compose: measure the base (base-run/metrics.jsonl) before blaming the adapter.
With any other `base.model` (a Hub id or local path) there is nothing to train: later stages
load that model directly.
"""
from __future__ import annotations

import json
import os

from accelerate.utils import set_seed

from reasonlm import outputs, train
from reasonlm.checkpoint import RUN_FILES, check_resumable, made_from, save_weights
from reasonlm.config import Recipe, RunPaths, TrainConfig, save_resolved
from reasonlm.example import read_dataset
from reasonlm.model import build_tiny, count_parameters, load_tokenizer, resolve_device, set_threads, train_tokenizer
from reasonlm.tasks import load_plugins
from reasonlm.tracking import finish_tracking, start_tracking, tracked_accelerator


class BaseError(ValueError):
    """A base-stage problem reported as one line."""


def run(recipe: Recipe, resume: str = "auto") -> str:
    """The base model's path (or Hub id). resume: 'auto' continues from base-run's newest
    checkpoint, 'never' starts over (the pipeline's choice when the base settings changed).
    Pretraining reports to the trackers in recipe.train.report_to."""
    load_plugins(recipe.all_task_files)
    cfg, paths = recipe.base, RunPaths(recipe.out_dir)
    if cfg.model != "tiny":
        load_tokenizer(cfg.model)  # fail early, in one line, if it is not reachable
        print(f"base: using pretrained {cfg.model}")
        return cfg.model
    run_dir = paths.base_run
    accelerator = tracked_accelerator(recipe.train.report_to, run_dir,
                                      cpu=resolve_device(recipe.device).type == "cpu")  # see train.run
    set_threads(recipe.threads, accelerator.num_processes)
    set_seed(cfg.seed)
    dataset = read_dataset(paths.data)
    if "base" not in dataset or len(dataset["base"]) == 0:
        raise BaseError("the dataset has no 'base' split to pretrain on (data.n_base is 0?)")
    texts = ["user", "assistant", "system"]
    for split in ("base", "train"):
        for r in dataset[split].select(range(min(5000, len(dataset[split])))):
            texts += [r["question"], "\n".join(r["steps"]), r["answer"]]
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_tiny(tokenizer, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size,
                       cfg.max_position, cfg.rope_theta, cfg.seed)
    total, _ = count_parameters(model)
    accelerator.print(f"base: tiny Llama {total/1e6:.2f}M params, vocab {len(tokenizer)}; pretraining on "
                      f"{len(dataset['base'])} problems of {recipe.data.base_steps[0]}-{recipe.data.base_steps[1]} steps")
    tcfg = TrainConfig(full_finetune=True, format="cot", steps=cfg.steps, batch_tokens=cfg.batch_tokens,
                       seq_len=cfg.seq_len, lr=cfg.lr, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                       eval_every=0, eval_samples=200, position_jitter=cfg.position_jitter,
                       packed_attention=cfg.packed_attention, save_every=max(100, cfg.steps // 4), seed=cfg.seed,
                       resume=resume)
    run_dir, final = paths.base_run, paths.base
    main = accelerator.is_main_process
    origin = made_from(cfg, recipe.out_dir, {"data": paths.data})  # what its checkpoints record
    fresh = f"move {run_dir}/checkpoint-* away to start over"
    # one run per base; a full disk anywhere in it is one line
    with outputs.lock(final, enabled=main), outputs.writing(run_dir):
        if main:
            outputs.check_replaceable(final, "base")  # someone else's folder: stop now, not after pretraining
            outputs.claim(run_dir, "base", RUN_FILES)
            check_resumable(run_dir, origin, resume, fresh)
            save_resolved(cfg, run_dir)
        probe = dataset["base"].select(range(min(200, len(dataset["base"]))))
        start_tracking(accelerator, run_dir, cfg)
        try:
            stats = train.fit(model, tokenizer, dataset["base"], probe, tcfg, run_dir, accelerator, origin, fresh)
        finally:
            finish_tracking(accelerator)
        save_weights(accelerator, model, tokenizer, final, tcfg, stage="base")
        if main:
            save_resolved(cfg, final, "base_config.yaml")
            outputs.atomic_write(os.path.join(run_dir, "train_stats.json"), json.dumps(stats, indent=1))
    accelerator.print(f"base: wrote {final} in {stats['train_seconds']}s ({stats['tokens_per_s']:,.0f} tokens/s)")
    return final
