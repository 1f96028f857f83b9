"""On-device: a merged model as one ONNX file next to its tokenizer, and a greedy runner on
onnxruntime that needs neither torch nor transformers' models (a phone or laptop app does the same).

    reasonlm export out/tiny-cpu/train --onnx          # writes out/tiny-cpu/train/onnx/
    OnnxEngine("out/tiny-cpu/train/onnx").answer("What is 3 + 4 * 2?")

The graph has no KV cache, on purpose: it maps token ids (1, T) to the next token's logits, and
the runner feeds the whole sequence again for every new token. That is quadratic in the answer
length, and fine for the tiny models this project trains (answers of ~100 tokens; measured in
eval/bench_onnx.py); the graph stays a plain decoder any runtime can load, with no cache inputs
and outputs whose layout differs per architecture. A model of real size wants the cache
(optimum's ONNX export of `*-with-past`).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from reasonlm.answer import encode_prompt, prompt_messages, stop_token_ids
from reasonlm.engine import SamplingParams, generate_greedily

ONNX_FILE = "model.onnx"
OPSET = 17


class OnnxError(ValueError):
    """An ONNX export or runner problem, reported as one line."""


class NextTokenLogits(torch.nn.Module):
    """The decoder as the graph sees it: input_ids (1, T) -> logits of the token after them (1, V)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        # An explicit all-ones mask: without one transformers looks for packed sequences in the
        # position ids (torch.diff), which has no ONNX operator.
        mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, -1]


def export_onnx(model, tokenizer, out: str) -> str:
    """Write `model` (a plain causal LM, adapter merged) as out/model.onnx with its tokenizer, into
    the folder `out` (created if missing; export.export builds it under a temporary name it owns
    and renames it, so nothing here deletes a folder)."""
    import onnx  # lazy: the `onnx` extra, needed only to export

    tmp = out
    os.makedirs(tmp, exist_ok=True)
    model = model.to("cpu").float().eval()
    model.set_attn_implementation("eager")  # plain matmuls: every ONNX runtime has the operators
    # a real prompt to trace with; any length works afterwards (the token axis is dynamic)
    example = torch.tensor([encode_prompt(tokenizer, prompt_messages("What is 1 + 2?"))])
    path = os.path.join(tmp, ONNX_FILE)
    with torch.no_grad():
        torch.onnx.export(NextTokenLogits(model), (example,), path, input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {1: "tokens"}}, opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(path)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "onnx_config.json"), "w") as f:
        json.dump({"file": ONNX_FILE, "opset": OPSET, "kv_cache": False, "inputs": ["input_ids (1, tokens) int64"],
                   "outputs": ["logits (1, vocab) of the next token"], "stop_token_ids": sorted(stop_token_ids(tokenizer))}, f, indent=1)
    return out


class OnnxEngine:
    """Greedy decoding with onnxruntime on an exported folder; `generate` has the signature of
    engine.Engine.generate (greedy only: the graph is for answering, not sampling)."""

    def __init__(self, directory: str, threads: int = 0):
        import onnxruntime  # lazy: the `onnx` extra
        from transformers import AutoTokenizer

        path = os.path.join(directory, ONNX_FILE)
        if not os.path.isfile(path):
            raise OnnxError(f"no ONNX model in {directory} (expected {path}; run `reasonlm export RUN --onnx`)")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        with open(os.path.join(directory, "onnx_config.json")) as f:
            meta = json.load(f)
        self.stop_ids = set(meta["stop_token_ids"])

    def next_token(self, ids: list[int]) -> int:
        logits = self.session.run(None, {"input_ids": np.asarray([ids], dtype=np.int64)})[0]
        return int(logits[0].argmax())

    def generate(self, prompts: list[list[int]], params: SamplingParams, on_token=None) -> list[list[int]]:
        return generate_greedily(prompts, params, self.continuation, self.stop_ids, on_token, OnnxError,
                                 "the ONNX runner")

    def continuation(self, prompt: list[int]):
        """The prompt's greedy tokens, one graph run each (the whole sequence fed every time)."""
        ids = list(prompt)
        while True:
            token = self.next_token(ids)
            yield token
            ids.append(token)

    def answer(self, question: str, max_new_tokens: int = 256) -> str:
        prompt = encode_prompt(self.tokenizer, prompt_messages(question))
        out = self.generate([prompt], SamplingParams(max_new_tokens=max_new_tokens))[0]
        return self.tokenizer.decode(out, skip_special_tokens=True)
