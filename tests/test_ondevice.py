"""On-device export: `reasonlm export RUN --onnx` writes model.onnx + tokenizer, and onnxruntime's
greedy answers are PyTorch's, token for token."""
import os
import subprocess
import sys

import pytest

from reasonlm.answer import encode_prompt, prompt_messages, stop_token_ids
from reasonlm.engine import KVCacheEngine, SamplingParams
from reasonlm.example import read_dataset
from reasonlm.model import load_adapter
from reasonlm.ondevice import ONNX_FILE, OnnxEngine, OnnxError, export_onnx
from tests.helpers import ROOT, rows, tiny_model_and_tokenizer


def greedy_pair(model, tokenizer, onnx_dir, questions, budget):
    """(PyTorch's greedy token ids through the KV-cache engine, onnxruntime's) for each question."""
    prompts = [encode_prompt(tokenizer, prompt_messages(q)) for q in questions]
    engine = KVCacheEngine(model, tokenizer.pad_token_id, stop_token_ids(tokenizer))
    params = SamplingParams(max_new_tokens=budget, batch_size=16)
    return engine.generate(prompts, params), OnnxEngine(onnx_dir, threads=1).generate(prompts, params)


def test_exported_graph_decodes_like_pytorch(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    export_onnx(model, tok, str(tmp_path / "onnx"))
    assert sorted(os.listdir(tmp_path / "onnx")) == sorted(
        ["chat_template.jinja", "model.onnx", "onnx_config.json", "tokenizer.json", "tokenizer_config.json"])
    # a random model never stops early: every answer runs the full 24 tokens past prompts of many lengths
    torch_ids, onnx_ids = greedy_pair(model.eval(), tok, str(tmp_path / "onnx"), [r["question"] for r in rows(6)], 24)
    assert torch_ids == onnx_ids
    assert sum(map(len, onnx_ids)) > 0


def test_runner_refuses_a_folder_without_a_model_and_sampling(tmp_path):
    with pytest.raises(OnnxError, match="no ONNX model in"):
        OnnxEngine(str(tmp_path))
    model, tok = tiny_model_and_tokenizer()
    export_onnx(model, tok, str(tmp_path / "onnx"))
    with pytest.raises(OnnxError, match="greedily"):
        OnnxEngine(str(tmp_path / "onnx")).generate([[1, 2]], SamplingParams(temperature=0.7))


@pytest.mark.slow
def test_cli_export_of_a_trained_run_answers_50_held_out_problems_like_pytorch(tmp_path):
    from tests.test_train_runs import ARGS, make_run_dir
    make_run_dir(tmp_path)
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    recipe = os.path.join(ROOT, "recipes", "tiny-cpu.yaml")
    subprocess.run([sys.executable, "-m", "reasonlm", "train", recipe, f"out_dir={tmp_path}", *ARGS,
                    "train.save_every=0", "train.lr=1e-2"], env=env, check=True, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "reasonlm", "export", str(tmp_path / "train"), "--onnx"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "export: wrote" in r.stdout and os.path.isfile(tmp_path / "train" / "onnx" / ONNX_FILE)
    model, tok = load_adapter(str(tmp_path / "base"), str(tmp_path / "train" / "adapter"), merged=True,
                                    device="cpu")
    dataset = read_dataset(str(tmp_path / "data"))
    held_out = [q for split in ("test", "test_ood", "validation") for q in dataset[split]["question"]][:50]
    assert len(held_out) == 50  # 20 + 10 + 20: none of them trained on
    torch_ids, onnx_ids = greedy_pair(model, tok, str(tmp_path / "train" / "onnx"), held_out, 64)
    assert len(torch_ids) == 50 and torch_ids == onnx_ids
    texts = [tok.decode(ids, skip_special_tokens=True) for ids in onnx_ids]
    assert OnnxEngine(str(tmp_path / "train" / "onnx")).answer(held_out[0], 64) == texts[0]
