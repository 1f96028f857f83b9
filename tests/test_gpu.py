"""The GPU check: on one CUDA GPU, the tiny pipeline end to end (base, LoRA SFT with packing in
bf16 autocast, RL rounds, eval), the engine's fast decode path against HF `generate`, CPU and
GPU numbers within stated tolerances, and a Qwen2.5-0.5B-shaped random-weight model through a few
LoRA steps, RL rounds and eval; each prints its throughput (and MFU where it trains).

Tests marked `gpu` are skipped where torch sees no CUDA GPU (CI has none). Run them all with
`bash eval/gpu_check.sh` (docs/testing.md#the-gpu-check), which also collects the numbers each
test records. The tiny pipeline (5 s) and the decode comparison take a `device` and also run on
the CPU, so their code paths run where there is no GPU.

Each stage runs in this process through the CLI (eval twice: the SFT adapter and the RL one), so that the CUDA allocator's counters show
whether the stage really put work on the GPU (a stage that silently stays on the CPU fails here).
"""
import json
import os
import time

import pytest
import torch
import yaml

from reasonlm import cli
from tests.helpers import ROOT, TINY_RECIPE

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU here (run bash eval/gpu_check.sh on a GPU machine)")
ON_GPU = [pytest.mark.gpu, needs_cuda]
# What the RL stage of these tiny runs does: 2 rounds of 2 problems x 2 samples, process reward.
TINY_RL = {"n_steps": [3, 4], "rounds": 2, "prompts_per_round": 2, "num_generations": 2, "max_completion_length": 24,
           "save_every": 0, "preflight_problems": 2, "reward": "process"}
# CPU vs GPU in fp32, the same seed. Float sums run in another order on the GPU (2e-5 apart after
# an update, as between 1 and 2 processes, tests/test_pipeline_rl.py), so: the training loss
# within 1% relative; greedy eval answers can flip at a near-tie: accuracy within 0.25 (2 of the
# 8 test problems); RL's first round samples the same policy: mean reward within 0.25.
LOSS_RTOL, ACCURACY_ATOL, REWARD_ATOL = 1e-2, 0.25, 0.25


def record(name: str, **numbers):
    """Print a test's numbers and, under eval/gpu_check.sh, add them to its results.jsonl."""
    line = {"test": name, "device": torch.cuda.get_device_name(0) if CUDA else "cpu", **numbers}
    print(json.dumps(line))
    folder = os.environ.get("GPU_CHECK_OUT")
    if folder:
        with open(os.path.join(folder, "results.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")


def cuda_allocations() -> int:
    """How many blocks the CUDA caching allocator has handed out so far (0 without CUDA)."""
    return torch.cuda.memory_stats().get("allocation.all.allocated", 0) if CUDA else 0


def stage(device: str, *argv: str):
    """`reasonlm ARGV` in this process; on CUDA it must allocate GPU memory (it ran there)."""
    before = cuda_allocations()
    t0 = time.perf_counter()
    cli.main(list(argv))
    seconds = time.perf_counter() - t0
    if device == "cuda":
        assert cuda_allocations() > before, f"`reasonlm {argv[0]}` with device=cuda put nothing on the GPU"
    return seconds


def matmul_peak_flops(device: str, dtype=torch.bfloat16, n: int = 8192) -> float:
    """FLOP/s of one large square matmul on `device` (the denominator of MFU here: measured, so it
    is the same card's best case, not a datasheet number)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    torch.cuda.synchronize()
    t0, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def tiny_run(tmp_path, device: str, precision: str) -> dict:
    """The tiny recipe (tests/helpers.py) with RL, on `device`, training in `precision`; each stage
    in turn. Returns the numbers the comparisons and the summary need."""
    recipe = {**TINY_RECIPE, "out_dir": str(tmp_path / "run"), "device": device, "direct_baseline": False,
              "train": {**TINY_RECIPE["train"], "steps": 20, "lr": 1e-2, "mixed_precision": precision,
                        "packed_attention": True, "log_every": 1},
              "eval": {**TINY_RECIPE["eval"], "ladder_per_steps": 0}, "rl": TINY_RL}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    seconds = {s: stage(device, s, str(path)) for s in ("data", "base", "train", "rl")}
    seconds["eval"] = stage(device, "eval", str(path))
    seconds["eval-rl"] = stage(device, "eval", str(path), "--adapter", str(run / "rl" / "adapter"),
                               "--out", str(run / "eval-rl"))
    train = json.loads((run / "train" / "train_stats.json").read_text())
    curve = [json.loads(line)["loss"] for line in (run / "train" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    rl = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(curve) == train["steps"] == 20 and sum(curve[-5:]) < sum(curve[:5]), curve  # it trained, and learned
    assert [r["round"] for r in rl] == [1, 2] and all(r["samples_total"] for r in rl)
    sft, after_rl = (json.loads((run / d / "report.json").read_text()) for d in ("eval", "eval-rl"))
    assert after_rl["adapter"] == str(run / "rl" / "adapter")
    return {"seconds": {k: round(v, 1) for k, v in seconds.items()}, "first_loss": curve[0],
            "final_loss": train["final_loss"], "train_tokens_per_s": train["tokens_per_s_after_first_step"],
            "accuracy": sft["accuracy"], "rl_accuracy": after_rl["accuracy"], "rl_reward_round1": rl[0]["reward_mean"],
            "rl_sampling_tokens_per_s": rl[0]["tokens_per_s"]}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=ON_GPU)])
def test_tiny_pipeline_end_to_end_in_bf16(tmp_path, device):
    """base, LoRA SFT on packed rows in bf16 autocast, 2 RL rounds, eval and eval-rl, every stage
    on `device`."""
    numbers = tiny_run(tmp_path, device, "bf16")  # checks that each stage ran, on the device, and training learned
    record("tiny pipeline, bf16 train", **numbers)


@pytest.mark.gpu
@needs_cuda
def test_cpu_and_gpu_give_the_same_numbers_within_tolerance(tmp_path):
    cpu = tiny_run(tmp_path / "cpu", "cpu", "no")
    gpu = tiny_run(tmp_path / "gpu", "cuda", "no")
    record("tiny pipeline, fp32, CPU vs GPU", cpu=cpu, gpu=gpu)
    assert gpu["final_loss"] == pytest.approx(cpu["final_loss"], rel=LOSS_RTOL)
    assert abs(gpu["accuracy"] - cpu["accuracy"]) <= ACCURACY_ATOL
    assert abs(gpu["rl_reward_round1"] - cpu["rl_reward_round1"]) <= REWARD_ATOL


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=ON_GPU)])
@pytest.mark.parametrize("arch", ["llama-gqa", "qwen2", "lora"])
def test_fast_decode_path_equals_hf_generate(device, arch):
    """The engine's default (fast) path, its general path and HF `generate` write the same greedy
    tokens, on `device` (tests/test_engine.py checks this on the CPU at more shapes)."""
    from tests.test_engine import generate, prompts, random_model

    model = random_model(arch).to(device)
    ps = prompts(12)
    budgets = [5 + 3 * (i % 7) for i in range(12)]
    t0 = time.perf_counter()
    fast = generate(model, ps, budgets, batch_size=6)
    fast_s = time.perf_counter() - t0
    assert fast == generate(model, ps, budgets, fast=False, batch_size=6)
    for p, b, ours in zip(ps, budgets, fast):
        x = torch.tensor([p], device=device)
        y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=b, do_sample=False,
                           eos_token_id=1, pad_token_id=0)[0, len(p):].tolist()
        assert ours == y[:next((i for i, t in enumerate(y) if t == 1), len(y))]
    record(f"fast decode vs HF generate ({arch})", identical=len(fast), tokens_per_s=round(sum(map(len, fast)) / fast_s, 1))


@pytest.mark.gpu
@needs_cuda
def test_qwen25_shaped_model_trains_lora_runs_rl_and_evals(tmp_path):
    """The Qwen2.5-0.5B architecture with random weights (tests/test_real_recipes.py builds it
    offline): the GRPO recipe's SFT (a few LoRA steps at seq 512, bf16 autocast), 2 RL rounds and
    eval, each stage on the GPU; prints training tokens/s and MFU (6 N per token, N the model's
    parameters, against a measured bf16 matmul)."""
    from tests.test_real_recipes import FIXTURE, save_random_model, small_data_overrides

    recipe = os.path.join(ROOT, "recipes", "qwen2.5-0.5b-gsm8k-grpo.yaml")
    model_dir = save_random_model("qwen2.5-0.5b", str(tmp_path / "qwen2.5-0.5b"))
    out = tmp_path / "run"
    steps, seq = 6, 512
    task = {"name": "gsm8k", "args": {"path": FIXTURE}}
    overrides = [f"out_dir={out}", "device=cuda", f"base.model={model_dir}", f"train.model={model_dir}",
                 f"eval.model={model_dir}", *small_data_overrides("recipes/qwen2.5-0.5b-gsm8k-grpo.yaml", model_dir, n=64),
                 f"train.steps={steps}", f"train.seq_len={seq}", f"train.batch_tokens={seq * 4}", "train.grad_accum=1",
                 "train.warmup_steps=1", "train.lr=5e-3", "train.eval_every=0", "train.eval_samples=0",
                 "train.save_every=0", "train.log_every=1", "eval.max_problems=4", "eval.max_new_tokens=32",
                 "eval.batch_size=8", "eval.ladder_per_steps=0",
                 f"rl.model={model_dir}", f"rl.task={json.dumps(task)}", "rl.n_steps=[1,3]", "rl.rounds=2",
                 "rl.prompts_per_round=4", "rl.num_generations=4", "rl.max_completion_length=64",
                 "rl.sample_batch_size=16", "rl.micro_batch_size=4", "rl.mini_batch_size=16", "rl.dynamic_sampling=false",
                 "rl.preflight_problems=4", "rl.save_every=0"]
    seconds = {s: stage("cuda", s, recipe, *overrides) for s in ("data", "train", "rl")}
    seconds["eval"] = stage("cuda", "eval", recipe, *overrides)
    seconds["eval-rl"] = stage("cuda", "eval", recipe, *overrides, "--adapter", str(out / "rl" / "adapter"),
                               "--out", str(out / "eval-rl"))
    train = json.loads((out / "train" / "train_stats.json").read_text())
    curve = [json.loads(line)["loss"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    rl = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(curve) == train["steps"] == steps and curve[-1] < curve[0] - 0.5, curve  # random weights, lr 5e-3
    assert [r["round"] for r in rl] == [1, 2] and all(r["samples"] == 16 for r in rl)
    assert json.loads((out / "eval-rl" / "report.json").read_text())["adapter"] == str(out / "rl" / "adapter")
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).parameters())
    tokens_per_s = train["tokens_per_s_after_first_step"]
    peak = matmul_peak_flops("cuda")
    record("Qwen2.5-0.5B shape, LoRA r=32 seq 512 bf16", seconds={k: round(v, 1) for k, v in seconds.items()},
           params=n_params, train_tokens_per_s=tokens_per_s, matmul_peak_tflops=round(peak / 1e12, 1),
           mfu=round(6 * n_params * tokens_per_s / peak, 4), rl_sampling_tokens_per_s=rl[0]["tokens_per_s"],
           rl_round_s=[round(r["sample_s"] + r["update_s"], 1) for r in rl], peak_memory_gb=round(
               torch.cuda.max_memory_allocated() / 2 ** 30, 2))
