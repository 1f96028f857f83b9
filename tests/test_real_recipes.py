"""The real-model recipes (SmolLM2-135M, Qwen2.5-0.5B), tested offline at full architecture.

Nothing is downloaded. For each recipe the test builds the published architecture (sizes from
the model's config.json, written out below) with random weights, trains a small byte-level BPE
with the model family's special tokens and a chat template in its style (ChatML with the
family's default system prompt), saves both like a Hub checkpoint (bf16 safetensors), and runs
the SHIPPED recipe through the real CLI with overrides that point the model at that directory,
shrink the data (the GSM8K fixture through the importer, in the recipe's own `data.tasks`
shape) and take a handful of steps. Then it checks the loss fell, the adapter was saved, eval
reported, chat answered, and (SmolLM2) the merged export matches base + adapter.

The fast tests check the recipes themselves: the Hub ids they name, the launch command on line
one, a comment on every value, batch divisibility on 1-8 GPUs, the parameter counts quoted in
their comments, and that loading the real Hub id offline fails with one line naming offline mode.
"""
import copy
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
import time

import pytest
import torch
import yaml

from reasonlm.config import load_recipe
from reasonlm.data.mix import mix_entries
from reasonlm.model import train_tokenizer
from tests.helpers import ROOT

FIXTURE = os.path.join(ROOT, "data", "fixtures", "gsm8k_sample.jsonl")

SMOL_ID, QWEN_ID = "HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"
# Published sizes (the models' config.json on the Hub): one table, kept in the scale benchmark.
_spec = importlib.util.spec_from_file_location("bench_scale", os.path.join(ROOT, "eval", "bench_scale.py"))
_bench_scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench_scale)
ARCHS = _bench_scale.ARCHS
# The families' default system prompts: their chat templates add one when a conversation has none.
SYSTEM = {"smollm2-135m": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
          "qwen2.5-0.5b": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."}
RECIPES = {  # recipe -> (architecture, Hub id)
    "recipes/smollm2-135m-gsm8k-lora.yaml": ("smollm2-135m", SMOL_ID),
    "recipes/qwen2.5-0.5b-gsm8k-lora.yaml": ("qwen2.5-0.5b", QWEN_ID),
    "recipes/qwen2.5-0.5b-gsm8k-lora-multigpu.yaml": ("qwen2.5-0.5b", QWEN_ID),
    "recipes/qwen2.5-0.5b-gsm8k-grpo.yaml": ("qwen2.5-0.5b", QWEN_ID),
}
# Parameter counts quoted in the recipes' comments (total, LoRA r=32 on all linear layers).
QUOTED = {"smollm2-135m": ("134.5M", "9.8M"), "qwen2.5-0.5b": ("494.0M", "17.6M")}


def chat_template(system: str) -> str:
    """ChatML, adding the family's default system message when the conversation has none
    (what SmolLM2-Instruct's and Qwen2.5-Instruct's templates do)."""
    return ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n" + system + "<|im_end|>\n' }}{% endif %}"
            "{% for message in messages %}"
            "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def model_config(arch: str, tokenizer):
    from transformers import LlamaConfig, Qwen2Config
    sizes = dict(ARCHS[arch])
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[sizes.pop("model_type")]
    return cls(**sizes, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)


def local_tokenizer(arch: str):
    """A BPE trained on GSM8K-style and word-problem text, with the family's special tokens."""
    from reasonlm.tasks import get_task
    texts = ["user", "assistant", "system", SYSTEM[arch]]
    with open(FIXTURE) as f:
        for line in f:
            try:
                texts += list(json.loads(line).values())
            except (ValueError, AttributeError):
                pass
    task, rng = get_task("word_problems", max_number=100, distractors=0.3), random.Random(0)
    for i in range(300):
        ex = task.generate(rng, 1 + i % 8)
        texts += [ex.question, "\n".join(ex.steps), f"#### {ex.answer}"]
    tok = train_tokenizer(texts, vocab_size=1024)  # <|endoftext|>=0, <|im_start|>=1, <|im_end|>=2 (SmolLM2's ids)
    tok.chat_template = chat_template(SYSTEM[arch])
    if arch == "smollm2-135m":  # SmolLM2-Instruct: bos <|im_start|>, pad = eos = <|im_end|>
        tok.bos_token, tok.pad_token = "<|im_start|>", "<|im_end|>"
    return tok  # Qwen2.5-Instruct: no bos, eos <|im_end|>, pad <|endoftext|> (train_tokenizer's defaults)


def save_random_model(arch: str, path: str) -> str:
    """The architecture with random weights + tokenizer, saved like a Hub checkpoint (bf16)."""
    from transformers import AutoModelForCausalLM
    tok = local_tokenizer(arch)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(arch, tok), dtype=torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def env(threads=2, **extra):
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT,
            "TOKENIZERS_PARALLELISM": "false", **extra}


def cli(*args, threads=2, launcher=None, timeout=1800):
    cmd = (launcher or [sys.executable, "-m", "reasonlm"]) + [str(a) for a in args]
    t0 = time.time()
    r = subprocess.run(cmd, env=env(threads), capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    r.seconds = time.time() - t0
    assert r.returncode == 0, f"{' '.join(cmd)}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    return r


def recipe_yaml(path: str) -> dict:
    with open(os.path.join(ROOT, path)) as f:
        return yaml.safe_load(f)


def small_data_overrides(recipe: str, model_dir: str, n: int = 8, gsm8k_train: int | None = None) -> list[str]:
    """The recipe's own data.tasks with the Hub GSM8K swapped for the local fixture (4 of its 12
    good records become the gsm8k_test split, train keeps the other 8, or `gsm8k_train` of them),
    and small counts (n generated training problems)."""
    tasks = copy.deepcopy(recipe_yaml(recipe)["data"]["tasks"])
    for t in tasks:
        if t["name"] == "gsm8k":
            t["args"] = {"path": FIXTURE}
            if t.get("into", "train") != "train":
                t["count"] = 4
            elif gsm8k_train:
                t["count"] = gsm8k_train
    return [f"data.tasks={json.dumps(tasks)}", f"data.n_train={n}", "data.n_validation=4", "data.n_test_per_steps=1",
            f"data.tokenizer={model_dir}"]


def losses(path):
    with open(path) as f:
        return [json.loads(l)["loss"] for l in f if '"loss"' in l]


# --- fast: the recipes as files ---------------------------------------------------------------
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_names_the_real_models_and_data(recipe):
    arch, hub_id = RECIPES[recipe]
    r = load_recipe(os.path.join(ROOT, recipe))
    assert r.base.model == r.train.model == r.eval.model == hub_id  # what from_pretrained is given
    assert r.data.tokenizer == hub_id
    sources = mix_entries(r.data)  # the data stage accepts the mix
    gsm = [s for s in sources if s.name == "gsm8k"]
    assert [(s.task.path, s.task.config, s.task.split, s.into) for s in gsm] == [
        ("openai/gsm8k", "main", "train", "train"), ("openai/gsm8k", "main", "test", "gsm8k_test")]
    assert [s.name for s in sources if not s.imported] == ["word_problems"]
    assert r.eval.sources[0] == {"dataset": "{out_dir}/data", "split": "gsm8k_test", "name": "gsm8k_test", "lmeval": True}
    assert r.train.seq_len == 1024 and r.train.mixed_precision == "bf16" and r.train.target_modules == "all-linear"
    assert r.base.model != "tiny" and r.data.n_base == 0


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_opens_with_its_launch_command_and_comments_every_value(recipe):
    with open(os.path.join(ROOT, recipe)) as f:
        lines = f.read().splitlines()
    first = lines[0]
    assert first in (f"# reasonlm pipeline {recipe}",
                     f"# accelerate launch --config_file recipes/accelerate/ddp.yaml -m reasonlm train {recipe}"), first
    for config in re.findall(r"--config_file (\S+\.yaml)", "\n".join(lines)):
        assert os.path.isfile(os.path.join(ROOT, config)), config
    header = "\n".join(l for l in lines if l.startswith("#"))
    assert "ESTIMATE" in header and "80 GB" in header and "MFU" in header and "6 N" in header
    for i, line in enumerate(lines, 1):
        body = line.split("#", 1)[0]
        if re.match(r"\s*(- )?[\w.]+:\s*\S", body):  # a key with a value (not a bare section header)
            assert "#" in line, f"{recipe}:{i} has no comment: {line!r}"


def test_multigpu_recipe_is_the_single_gpu_run_with_grad_accum_1():
    single = recipe_yaml("recipes/qwen2.5-0.5b-gsm8k-lora.yaml")
    multi = recipe_yaml("recipes/qwen2.5-0.5b-gsm8k-lora-multigpu.yaml")
    assert multi["train"].pop("grad_accum") == 1 and single["train"].pop("grad_accum") == 4
    assert multi.pop("out_dir") != single.pop("out_dir")
    assert multi == single  # same data, model, LoRA, global batch, steps and eval


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_global_batch_divides_over_the_gpu_counts_it_claims(recipe):
    r = load_recipe(os.path.join(ROOT, recipe))
    rows = r.train.batch_tokens // r.train.seq_len
    worlds = (1, 2, 4, 8) if "multigpu" in recipe else (1,)
    for world in worlds:
        assert rows % (world * r.train.grad_accum) == 0, (recipe, world)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architecture_matches_the_parameter_counts_the_recipes_quote(arch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    tok = local_tokenizer(arch)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config(arch, tok))
    total = sum(p.numel() for p in model.parameters())
    lora = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert (f"{total / 1e6:.1f}M", f"{trainable / 1e6:.1f}M") == QUOTED[arch]
    for recipe, (a, _) in RECIPES.items():
        if a == arch:
            text = open(os.path.join(ROOT, recipe)).read()
            assert QUOTED[arch][0] in text or "single-GPU recipe" in text
            assert f"{QUOTED[arch][1]} trainable" in text


def test_bench_scale_uses_the_same_architectures():
    spec = importlib.util.spec_from_file_location("bench_scale", os.path.join(ROOT, "eval", "bench_scale.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.ARCHS == ARCHS


@pytest.mark.parametrize("recipe,stage", [("recipes/smollm2-135m-gsm8k-lora.yaml", "base"),
                                          ("recipes/qwen2.5-0.5b-gsm8k-lora.yaml", "pipeline")])
def test_real_hub_id_offline_is_one_clear_line(recipe, stage, tmp_path):
    """No weights are cached here: HF_HUB_OFFLINE=1 must end in one line that says so."""
    _, hub_id = RECIPES[recipe]
    r = subprocess.run([sys.executable, "-m", "reasonlm", stage, recipe, f"out_dir={tmp_path}"], cwd=ROOT,
                       env=env(1, HF_HOME=str(tmp_path / "hf-home")), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("error:") and hub_id in lines[0], lines[0]
    assert "offline" in lines[0].lower(), lines[0]


def test_chat_with_a_real_hub_id_offline_is_one_clear_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "reasonlm", "chat", "--model", QWEN_ID, "-p", "1+1?"], cwd=ROOT,
                       env=env(1, HF_HOME=str(tmp_path / "hf-home")), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and QWEN_ID in lines[0] and "HF_HUB_OFFLINE=1" in lines[0], r.stderr


# --- slow: the shipped recipes, end to end, at full architecture --------------------------------
def run_recipe(recipe, tmp_path, steps, seq_len, grad_accum=None, extra=()):
    """`reasonlm pipeline RECIPE` on the local random model; returns (model dir, out dir, result)."""
    arch, _ = RECIPES[recipe]
    model_dir = save_random_model(arch, str(tmp_path / arch))
    out = tmp_path / "run"
    r = load_recipe(os.path.join(ROOT, recipe))
    accum = grad_accum or r.train.grad_accum
    overrides = [f"out_dir={out}", f"base.model={model_dir}", f"train.model={model_dir}", f"eval.model={model_dir}",
                 *small_data_overrides(recipe, model_dir),
                 f"train.steps={steps}", f"train.seq_len={seq_len}", f"train.batch_tokens={seq_len * accum}",
                 f"train.grad_accum={accum}", "train.warmup_steps=1", "train.lr=5e-3",  # random weights: a big step
                 "train.eval_every=0", "train.eval_samples=0", f"train.save_every={steps // 2}", "train.log_every=1",
                 "eval.max_problems=2", "eval.max_new_tokens=8", "eval.batch_size=8",
                 "eval.ladder_per_steps=0",  # the ladder's 550 long word problems would take many minutes at 0.5B on CPU
                 *extra]
    result = cli("pipeline", recipe, *overrides)
    result.overrides = overrides
    return model_dir, out, result


def check_run(out, model_dir, steps, result):
    curve = losses(out / "train" / "metrics.jsonl")
    assert len(curve) == steps
    assert curve[-1] < curve[0] - 0.5 and min(curve[-2:]) < min(curve[:2]), curve  # the loss goes down
    adapter = out / "train" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    with open(adapter / "adapter_config.json") as f:
        config = json.load(f)
    assert config["base_model_name_or_path"] == model_dir and config["r"] == 32
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with open(out / "eval" / "report.json") as f:
        report = json.load(f)
    assert list(report["splits"]) == ["gsm8k_test", "word_problems", "word_problems_ood"]
    assert "lmeval_strict_match" in report["splits"]["gsm8k_test"]
    assert "gsm8k_test" in result.stdout and "pipeline:" in result.stdout
    with open(out / "data" / "stats.json") as f:
        stats = json.load(f)
    assert stats["splits"]["gsm8k_test"]["rows"] == 4
    return adapter


def chat_once(recipe, model_dir, adapter, tmp_path):
    short = recipe_yaml(recipe)
    short["chat"]["max_new_tokens"] = 8
    path = tmp_path / "chat-recipe.yaml"
    path.write_text(yaml.safe_dump(short))
    r = cli("chat", "--model", model_dir, "--adapter", adapter, "--recipe", path, "-p",
            "Lena picked 36 strawberries and half as many the next day. How many in total?")
    # cut at the recipe's budget of 8 tokens (the note says so), or an answer the model ended itself
    assert "stopped at 8 tokens" in r.stderr or (r.stdout.strip() and "stopped at" not in r.stderr), r.stderr
    return r


@pytest.mark.slow
def test_smollm2_recipe_end_to_end(tmp_path):
    recipe = "recipes/smollm2-135m-gsm8k-lora.yaml"
    model_dir, out, result = run_recipe(recipe, tmp_path, steps=6, seq_len=256)  # grad_accum 2, as in the recipe
    adapter = check_run(out, model_dir, 6, result)
    assert (out / "train" / "checkpoint-0000003").exists()
    chat_once(recipe, model_dir, adapter, tmp_path)
    # the CI gate as docs/real-models.md runs it: a baseline from this report, then eval against it
    baseline = tmp_path / "baseline.json"
    cli("eval", "baseline", out / "eval" / "report.json", baseline)
    gate = cli("eval", recipe, *result.overrides, "--baseline", baseline, "--out", tmp_path / "eval-again")
    assert "gate: passed" in gate.stdout
    failing = subprocess.run([sys.executable, "-m", "reasonlm", "eval", recipe, *result.overrides,
                              "eval.thresholds={splits.gsm8k_test.accuracy: 0.5}", "--out", tmp_path / "eval-again"],
                             env=env(2), capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert failing.returncode == 1 and "splits.gsm8k_test.accuracy" in failing.stderr, failing.stderr[-2000:]
    # export --merge folds the adapter into the (tied-embedding) base: same logits as base + adapter
    cli("export", out / "train", "--merge")
    from transformers import AutoModelForCausalLM
    from reasonlm.model import load_adapter
    merged = AutoModelForCausalLM.from_pretrained(out / "train" / "merged", dtype=torch.float32)
    unmerged, tok = load_adapter(model_dir, str(adapter))
    ids = tok("Tom has 120 marbles.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, unmerged(ids).logits, atol=1e-3)


@pytest.mark.slow
def test_qwen25_recipe_end_to_end(tmp_path):
    recipe = "recipes/qwen2.5-0.5b-gsm8k-lora.yaml"
    model_dir, out, result = run_recipe(recipe, tmp_path, steps=4, seq_len=192, grad_accum=1)  # affordable on CPU
    adapter = check_run(out, model_dir, 4, result)
    chat_once(recipe, model_dir, adapter, tmp_path)
    # checker-guided decoding through the CLI: the calculator check on GSM8K, the step check on the
    # word problems, each problem's rejected lines and compute in samples.jsonl
    cli("eval", recipe, *result.overrides, "--search", "step_retry", "eval.search.propose=branch",
        "eval.max_new_tokens=24", "--out", tmp_path / "eval-search")
    samples = [json.loads(line) for line in open(tmp_path / "eval-search" / "samples.jsonl")]
    assert {s["split"] for s in samples} == {"gsm8k_test", "word_problems", "word_problems_ood"}
    assert all(s["search"] == "step_retry" and s["generated_tokens"] >= s["tokens"] for s in samples)


def test_grpo_recipe_is_the_lora_recipe_plus_grpo_on_gsm8k_train():
    lora = recipe_yaml("recipes/qwen2.5-0.5b-gsm8k-lora.yaml")
    grpo = recipe_yaml("recipes/qwen2.5-0.5b-gsm8k-grpo.yaml")
    grpo.pop("rl")  # checked below, resolved
    assert grpo.pop("out_dir") != lora.pop("out_dir") and grpo["eval"].pop("ladder_per_steps") == 50
    assert grpo == lora  # the same SFT run and eval: SFT vs SFT+RL is a fair comparison
    r = load_recipe(os.path.join(ROOT, "recipes/qwen2.5-0.5b-gsm8k-grpo.yaml"))
    assert r.rl.model == QWEN_ID and r.rl.algorithm == "grpo" and r.rl.adapter == ""
    assert r.rl.task == {"name": "gsm8k", "args": {"path": "openai/gsm8k", "config": "main", "split": "train"}}


@pytest.mark.slow
def test_qwen25_grpo_recipe_end_to_end(tmp_path):
    """SFT, then GRPO on the GSM8K fixture's train questions scored by the GSM8K checker, then
    eval-rl, through `reasonlm pipeline` on the random-weight Qwen2.5 architecture."""
    recipe = "recipes/qwen2.5-0.5b-gsm8k-grpo.yaml"
    model_dir = str(tmp_path / "qwen2.5-0.5b")
    task = {"name": "gsm8k", "args": {"path": FIXTURE}}
    model_dir, out, result = run_recipe(recipe, tmp_path, steps=2, seq_len=192, grad_accum=1, extra=[
        "eval.ladder_per_steps=0",  # the ladder's long word problems take minutes at 0.5B on CPU (tiny pipeline test)
        f"rl.model={model_dir}", f"rl.task={json.dumps(task)}", "rl.n_steps=[1,3]", "rl.rounds=2",
        "rl.prompts_per_round=2", "rl.num_generations=2", "rl.max_completion_length=8", "rl.sample_batch_size=4",
        "rl.micro_batch_size=2", "rl.dynamic_sampling=false", "rl.preflight_problems=4", "rl.save_every=1"])
    # the SFT part is the LoRA recipe's, checked by test_qwen25_recipe_end_to_end; here: it ran, then RL on it
    assert (out / "train" / "adapter" / "adapter_model.safetensors").exists() and "pipeline:" in result.stdout
    adapter = out / "rl" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    with open(adapter / "adapter_config.json") as f:
        assert json.load(f)["base_model_name_or_path"] == model_dir
    metrics = [json.loads(l) for l in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2] and all(m["samples"] == 4 for m in metrics)
    from reasonlm.tasks import get_task
    fixture_questions = {ex.question for ex in get_task("gsm8k", path=FIXTURE).load()[0]}
    logged = [json.loads(l) for l in (out / "rl" / "completions.jsonl").read_text().splitlines()]
    assert logged and all(g["question"] in fixture_questions for g in logged)  # GSM8K train questions
    report = json.loads((out / "eval" / "report.json").read_text())
    assert list(report["rl"]["splits"]) == ["gsm8k_test", "word_problems", "word_problems_ood"]
    assert (out / "eval-rl" / "report.json").exists() and "SFT+RL accuracy" in (out / "eval" / "report.md").read_text()


@pytest.mark.slow
def test_qwen25_multigpu_recipe_on_two_processes(tmp_path):
    """The multi-GPU recipe under `accelerate launch` with 2 CPU processes (DDP over gloo): the
    recipe's grad_accum 1 splits each global batch of 2 rows over the 2 processes. The training
    set is 2 GSM8K records, one row each, so every step sees the same global batch and its loss
    must fall step after step."""
    recipe = "recipes/qwen2.5-0.5b-gsm8k-lora-multigpu.yaml"
    model_dir = save_random_model("qwen2.5-0.5b", str(tmp_path / "qwen"))
    out = tmp_path / "run"
    common = [f"out_dir={out}", f"train.model={model_dir}", *small_data_overrides(recipe, model_dir, 0, 2)]
    cli("data", recipe, *common)
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines",
                "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "reasonlm"]
    r = cli("train", recipe, *common, "train.steps=3", "train.seq_len=160", "train.batch_tokens=320",
            "train.warmup_steps=1", "train.lr=5e-3", "train.eval_every=0", "train.eval_samples=0",
            "train.save_every=0", "train.log_every=1", threads=1, launcher=launcher)  # the recipe's bf16 autocast, on CPU
    assert "2 process(es)" in r.stdout + r.stderr
    curve = losses(out / "train" / "metrics.jsonl")
    assert len(curve) == 3 and curve[0] > curve[1] > curve[2], curve
    assert (out / "train" / "adapter" / "adapter_model.safetensors").exists()
