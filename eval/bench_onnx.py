"""ONNX (onnxruntime, reasonlm.ondevice) and GGUF (llama.cpp, reasonlm.gguf; with --gguf) vs
PyTorch (reasonlm.engine) on a trained model: size on disk, problems/s and whether the greedy
answers are the same.

    python eval/bench_onnx.py --n 50 --threads 1 [--gguf] [--split test,test_ood]   # out/tiny-cpu
    python eval/bench_onnx.py --base RUN/base --adapter RUN/train/adapter --data RUN/data --n 50

The adapter is merged into the base and written twice under --out: as safetensors
(`save_pretrained`, what PyTorch loads) and as ONNX (`reasonlm export --onnx`). Both decode the
same chat-template prompts greedily with the same stop tokens and per-problem budgets (2x the
gold solution + 8, as eval). PyTorch runs twice: one problem at a time (what an app answering
one question does) and in batches of 64 (what eval does); ONNX runs one problem at a time without
a KV cache (see reasonlm/ondevice.py); llama.cpp one problem at a time with its KV cache. Prints
a markdown table; exit status 1 when an ONNX or llama.cpp answer differs from PyTorch's.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from reasonlm.answer import answers_match, encode_prompt, parse_completion, prompt_messages
from reasonlm.engine import SamplingParams, engine_for
from reasonlm.example import Example, answer_budget, read_dataset
from reasonlm.gguf import GGUF_FILE, GgufEngine, export_gguf
from reasonlm.model import load_adapter
from reasonlm.ondevice import ONNX_FILE, OnnxEngine, export_onnx


def folder_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 1e6


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="out/tiny-cpu/base")
    p.add_argument("--adapter", default="out/tiny-cpu/train/adapter")
    p.add_argument("--data", default="out/tiny-cpu/data")
    p.add_argument("--split", default="test", help="a split, or several joined by commas (the first --n problems)")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (the same for both)")
    p.add_argument("--gguf", action="store_true", help="also llama.cpp on the GGUF export (needs llama-cpp-python)")
    p.add_argument("--out", default="out/bench-onnx")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_adapter(args.base, args.adapter, merged=True, device="cpu")
    merged_dir, onnx_dir = os.path.join(args.out, "merged"), os.path.join(args.out, "onnx")
    model.save_pretrained(merged_dir, safe_serialization=True)
    tok.save_pretrained(merged_dir)
    _, export_s = timed(lambda: export_onnx(model, tok, onnx_dir))
    model = load_adapter(merged_dir, device="cpu")[0]  # the plain model the app would ship, eager as saved

    dataset = read_dataset(args.data)
    examples = [Example.from_row(r) for name in args.split.split(",") for r in dataset[name]][:args.n]
    prompts = [encode_prompt(tok, prompt_messages(e.question)) for e in examples]
    context = model.config.max_position_embeddings
    budgets = [answer_budget(tok, e.question, len(p), context) for e, p in zip(examples, prompts)]
    engine = engine_for(model, tok)
    onnx_engine = OnnxEngine(onnx_dir, threads=args.threads)
    with torch.inference_mode():
        one, one_s = timed(lambda: engine.generate(prompts, SamplingParams(max_new_tokens=budgets, batch_size=1)))
        batched, batched_s = timed(lambda: engine.generate(prompts, SamplingParams(max_new_tokens=budgets, batch_size=64)))
    onnx_out, onnx_s = timed(lambda: onnx_engine.generate(prompts, SamplingParams(max_new_tokens=budgets)))
    if args.gguf:
        gguf_path = export_gguf(model, tok, os.path.join(args.out, "gguf"))
        gguf_engine = GgufEngine(gguf_path, threads=args.threads)
        gguf_out, gguf_s = timed(lambda: gguf_engine.generate(prompts, SamplingParams(max_new_tokens=budgets)))

    def accuracy(outputs):
        return sum(answers_match(parse_completion(tok.decode(o, skip_special_tokens=True)).answer, e.answer)
                   for o, e in zip(outputs, examples)) / len(examples)

    same = sum(a == b for a, b in zip(one, onnx_out))
    same_gguf = sum(a == b for a, b in zip(one, gguf_out)) if args.gguf else len(one)
    n, tokens = len(examples), sum(map(len, onnx_out))
    print(f"{n} problems of {args.data}:{args.split}, {tokens} generated tokens, {args.threads} thread(s); "
          f"ONNX export took {export_s:.1f}s; ONNX greedy answers identical to PyTorch's: {same}/{n}"
          + (f"; llama.cpp's: {same_gguf}/{n}" if args.gguf else "") + "\n")
    print("| runtime | on disk | problems/s | accuracy |\n|---|---|---|---|")
    size_pt, size_onnx = folder_mb(merged_dir), os.path.getsize(os.path.join(onnx_dir, ONNX_FILE)) / 1e6
    print(f"| PyTorch, KV cache, one problem at a time | {size_pt:.2f} MB (safetensors + tokenizer) | "
          f"{n / one_s:.2f} | {accuracy(one):.3f} |")
    print(f"| PyTorch, KV cache, batches of 64 | same | {n / batched_s:.2f} | {accuracy(batched):.3f} |")
    print(f"| onnxruntime, no cache, one at a time | {size_onnx:.2f} MB (model.onnx; folder "
          f"{folder_mb(onnx_dir):.2f} MB) | {n / onnx_s:.2f} | {accuracy(onnx_out):.3f} |")
    if args.gguf:
        print(f"| llama.cpp (llama-cpp-python), KV cache, one at a time | "
              f"{os.path.getsize(gguf_path) / 1e6:.2f} MB ({GGUF_FILE}, float32) | {n / gguf_s:.2f} | "
              f"{accuracy(gguf_out):.3f} |")
    if same != n or same_gguf != n:
        sys.exit(1)


if __name__ == "__main__":
    main()
