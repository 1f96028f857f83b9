"""Real-architecture benchmark: one LoRA training step of SmolLM2-135M or Qwen2.5-0.5B on this machine.

    OMP_NUM_THREADS=2 python eval/bench_scale.py --arch qwen2.5-0.5b --seq 512 --dtype fp32
    OMP_NUM_THREADS=2 python eval/bench_scale.py --arch smollm2-135m --seq 512 --dtype bf16 --header

Builds the published architecture with random weights (nothing is downloaded), attaches LoRA the
way the recipes do (reasonlm.model.attach_lora: r=32, alpha=64, all linear layers), and times the
training step of reasonlm.train.fit on one packed row of `--seq` tokens (batch 1): forward and
loss through train.token_losses, backward, gradient clipping and an AdamW step, under Accelerate
(`--dtype bf16` = train.mixed_precision: bf16, i.e. fp32 weights under bf16 autocast, as the
recipes train). Prints one markdown table row: s/step is the median of `--steps` steps after
`--warmup` warm-up steps (CPU s/step: the process's CPU time per step, summed over its threads;
on a machine shared with other jobs wall time inflates, CPU time much less); peak RSS is this process's getrusage ru_maxrss (model, optimizer,
activations and allocator slack, everything). The same row again in JSON goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

# Published sizes (the models' config.json on the Hub); tests/test_real_recipes.py builds from this table too.
ARCHS = {
    "smollm2-135m": dict(model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True,
                         rope_theta=100000.0, max_position_embeddings=8192, rms_norm_eps=1e-5),
    "qwen2.5-0.5b": dict(model_type="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                         rope_theta=1000000.0, max_position_embeddings=32768, rms_norm_eps=1e-6),
}
HEADER = ("| arch | params | LoRA trainable | seq | dtype | threads | s/step (median) | CPU s/step | tokens/s | peak RSS |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux reports KiB


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(ARCHS), default="qwen2.5-0.5b")
    p.add_argument("--seq", type=int, default=512, help="tokens in the one packed row (batch 1)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="fp32, or bf16 autocast over fp32 weights (train.mixed_precision: bf16)")
    p.add_argument("--steps", type=int, default=3, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--header", action="store_true", help="print the table header first")
    args = p.parse_args()

    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from reasonlm.config import TrainConfig
    from reasonlm.model import attach_lora, count_parameters
    from reasonlm.train import token_losses

    sizes = dict(ARCHS[args.arch])
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[sizes.pop("model_type")]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cls(**sizes), dtype=torch.float32)
    base_params, _ = count_parameters(model)
    cfg = TrainConfig(lora_r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules="all-linear",
                      mixed_precision="bf16" if args.dtype == "bf16" else "no")
    model = attach_lora(model, cfg)
    _, trainable = count_parameters(model)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision=cfg.mixed_precision if cfg.mixed_precision != "no" else None)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.98), weight_decay=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    rss_model = rss_gb()

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, sizes["vocab_size"], (1, args.seq), generator=gen, device=accelerator.device)
    labels = ids.clone()
    labels[:, : args.seq // 4] = -100  # the prompt part carries no loss, as in training
    positions = torch.arange(args.seq, device=accelerator.device)[None]

    times, cpu_times = [], []
    for step in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        with accelerator.autocast():
            loss_sum, n = token_losses(model, ids, labels, positions)
            accelerator.backward(loss_sum / n)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    s, cpu = statistics.median(times), statistics.median(cpu_times)
    row = {"arch": args.arch, "params_M": round(base_params / 1e6, 1), "trainable_M": round(trainable / 1e6, 2),
           "seq": args.seq, "dtype": args.dtype, "threads": torch.get_num_threads(), "s_per_step": round(s, 2),
           "tokens_per_s": round(args.seq / s, 1),
           "cpu_s_per_step": round(cpu, 2), "peak_rss_gb": round(rss_gb(), 2),
           "rss_after_model_gb": round(rss_model, 2), "step_times": [round(t, 2) for t in times],
           "load_avg_1min": round(os.getloadavg()[0], 2)}
    if args.header:
        print(HEADER)
    print(f"| {args.arch} | {row['params_M']}M | {row['trainable_M']}M | {args.seq} | {args.dtype} | {row['threads']} "
          f"| {s:.2f} | {cpu:.2f} | {row['tokens_per_s']:.0f} | {row['peak_rss_gb']:.2f} GB |")
    print(json.dumps(row), file=sys.stderr)


if __name__ == "__main__":
    main()
