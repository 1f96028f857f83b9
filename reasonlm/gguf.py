"""GGUF for llama.cpp: a merged model as one .gguf file (weights, tokenizer, chat template), the
format llama.cpp, Ollama and LM Studio load.

    reasonlm export out/tiny-cpu/train --gguf          # writes out/tiny-cpu/train/gguf/model.gguf
    llama-cli -m out/tiny-cpu/train/gguf/model.gguf --temp 0

The converter covers what reasonlm trains: Llama-family decoders (`LlamaForCausalLM`: the tiny
default model, SmolLM2) and `Qwen2ForCausalLM` (Qwen2.5, with its q/k/v biases), with
byte-level BPE tokenizers. Anything else is one line naming what is not covered, rather than a
file llama.cpp would load and answer wrongly; llama.cpp's own `convert_hf_to_gguf.py` on a
`reasonlm export --merge` folder covers more architectures.

What it has to get right (learnt from llama.cpp's converter and loader):
- Weights are float32 (exact; `llama-quantize` makes smaller files from this one). GGUF stores a
  tensor's dimensions in reverse order, which the `gguf` writer does from the PyTorch shape.
- llama.cpp's `llama` architecture rotates adjacent pairs of a head's dimensions (GPT-J style);
  Hugging Face's Llama rotates the two halves (`rotate_half`). So the rows of q_proj and k_proj
  are reordered within each head (`interleave_rope_rows`), which turns one layout into the other
  (the inverse of the permutation Hugging Face's own Llama converter applies). `qwen2` uses the
  halves layout in llama.cpp too: no reordering.
- Tied embeddings: no `output.weight`; llama.cpp then uses `token_embd.weight` for the output.
- The tokenizer: tokens in id order with their types (normal, control for special tokens,
  user-defined for other added tokens, unused for embedding rows the tokenizer does not fill),
  the merges, and the pre-tokenizer. llama.cpp does not read the pre-tokenizer's definition from
  the file: it knows a fixed list by name, and `PRE_TOKENIZERS` maps the pre-tokenizers reasonlm
  meets to the name whose splitting gives the same token ids (see its comment).
"""
from __future__ import annotations

import json
import os

import numpy as np

from reasonlm.answer import end_of_turn
from reasonlm.engine import generate_greedily

GGUF_FILE = "model.gguf"
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
ROPE_PAIRS_INTERLEAVED = {"llama"}  # llama.cpp architectures whose rope rotates adjacent pairs

# Hugging Face name -> GGUF name. Per layer (blk.N.*) and for the whole model.
LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.o_proj.bias": "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.weight": "ffn_down.weight", "mlp.down_proj.bias": "ffn_down.bias",
}
MODEL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
QWEN2_BIASES = {"attn_q.bias", "attn_k.bias", "attn_v.bias"}  # the only biases llama.cpp's qwen2 reads

GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# A Hugging Face pre-tokenizer (its steps, described by `pre_tokenizer_steps`) -> the llama.cpp
# pre-tokenizer (`tokenizer.ggml.pre`) that splits text the same way. Exact for gpt-2 (GPT-2's
# regex), smollm (single digits, then GPT-2's regex: SmolLM2), qwen2 and llama-bpe (Llama 3).
# reasonlm's own tokenizer (model.train_tokenizer: punctuation and digits isolated, then GPT-2's
# regex) has no exact twin; llama.cpp's "default" splits punctuation runs off first and digit runs
# last, and the BPE merges make the two agree: no merge learnt under our splitting joins a digit or
# a punctuation mark to anything, so coarser pieces around them give the same tokens. They differ
# only where a run of 2+ spaces stands right before a digit (GPT-2's regex lends the last space
# to the number) and the vocabulary has a token for the run; tests/test_gguf.py checks the ids on
# the eval data, and llama.cpp itself in the slow test.
PRE_TOKENIZERS = {
    ("bytelevel",): "gpt-2",
    ("digits", "bytelevel"): "smollm",
    ("punctuation", "digits", "bytelevel"): "default",
    ("digits", "punctuation", "bytelevel"): "default",
    (f"split:{QWEN2_REGEX}", "bytelevel-noregex"): "qwen2",
    (f"split:{LLAMA3_REGEX}", "bytelevel-noregex"): "llama-bpe",
}
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # gguf.TokenType's values


class GgufError(ValueError):
    """A model or tokenizer this converter does not cover, or a missing `gguf` package: one line."""


def export_gguf(model, tokenizer, out: str, name: str = "reasonlm") -> str:
    """Write `model` (a plain causal LM, adapter merged) with `tokenizer` as out/model.gguf, into
    the folder `out` (created if missing; export.export builds it under a temporary name it owns
    and renames it), `name` as the model's name in the file. Returns the file's path."""
    try:
        import gguf  # lazy: the `gguf` extra, needed only to export
    except ImportError:
        raise GgufError("export --gguf needs the gguf package: pip install 'reasonlm[gguf]'") from None
    config = model.config
    arch = architecture(model)
    tensors = gguf_tensors(model, arch)  # before writing anything: it refuses what it cannot map
    vocab = tokenizer_arrays(tokenizer, model.get_input_embeddings().num_embeddings)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, GGUF_FILE)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, value in hyperparameters(config, arch).items():
        getattr(writer, f"add_{key}")(value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    for key in ("eos", "bos", "pad", "eot"):
        if vocab[key] is not None:
            getattr(writer, f"add_{key}_token_id")(vocab[key])
    writer.add_add_bos_token(vocab["bos"] is not None and bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_eos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    for name, array in tensors:
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def architecture(model) -> str:
    """The llama.cpp architecture of a transformers model, or a GgufError saying what is not covered."""
    name, config = type(model).__name__, model.config
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise GgufError(f"export --gguf covers {', '.join(ARCHITECTURES)}, not {name}: export --merge and convert "
                        "that folder with llama.cpp's convert_hf_to_gguf.py")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise GgufError(f"export --gguf: {name} with hidden_act={config.hidden_act} is not covered (silu only)")
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") != "default" or getattr(config, "partial_rotary_factor", 1.0) != 1.0:
        raise GgufError(f"export --gguf: rope scaling {rope.get('rope_type')!r} is not covered: export --merge and "
                        "convert that folder with llama.cpp's convert_hf_to_gguf.py")
    if getattr(config, "use_sliding_window", False):
        raise GgufError("export --gguf: sliding-window attention is not covered")
    return arch


def rope_parameters(config) -> dict:
    """rope_theta and rope_type: transformers 5 keeps them in `rope_parameters`, older configs on the config."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def hyperparameters(config, arch: str) -> dict:
    """GGUF metadata (the GGUFWriter.add_<key> methods) of a decoder's config."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    out = {"context_length": config.max_position_embeddings, "embedding_length": config.hidden_size,
           "block_count": config.num_hidden_layers, "feed_forward_length": config.intermediate_size,
           "head_count": heads, "head_count_kv": kv_heads,
           "rope_freq_base": float(rope_parameters(config)["rope_theta"]),
           "layer_norm_rms_eps": float(config.rms_norm_eps),
           "rope_dimension_count": head_dim(config), "vocab_size": config.vocab_size}
    if head_dim(config) != config.hidden_size // heads:
        out.update(key_length=head_dim(config), value_length=head_dim(config))
    return out


def interleave_rope_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the output rows of q_proj or k_proj (weight or bias) within each head from Hugging
    Face's rope layout (the first half of a head's dimensions rotates with the second half) to
    llama.cpp's `llama` layout (dimension 2i rotates with 2i+1): row h*d + i goes to h*d + 2i and
    row h*d + d/2 + i to h*d + 2i + 1."""
    d = weight.shape[0] // heads
    return weight.reshape(heads, 2, d // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model, arch: str) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every weight of the model; a GgufError names any weight it
    cannot place. The output projection is left out when it is the embedding (tied)."""
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    out = []
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and tied:
            continue
        name = MODEL_TENSORS.get(key)
        if name is None and key.startswith("model.layers."):
            block, _, rest = key.removeprefix("model.layers.").partition(".")
            name = f"blk.{block}.{LAYER_TENSORS[rest]}" if rest in LAYER_TENSORS else None
            if name and arch == "qwen2" and name.endswith(".bias") and name.split(".", 2)[2] not in QWEN2_BIASES:
                name = None
        if name is None:
            raise GgufError(f"export --gguf: no GGUF tensor for {key} of {type(model).__name__}")
        array = tensor.detach().to("cpu").float().numpy()
        if arch in ROPE_PAIRS_INTERLEAVED and name.split(".")[-2] in ("attn_q", "attn_k"):
            array = interleave_rope_rows(array, heads if ".attn_q." in name else kv_heads)
        out.append((name, np.ascontiguousarray(array)))
    return out


# --- tokenizer -----------------------------------------------------------------------------------
def pre_tokenizer_steps(spec: dict | None) -> tuple[str, ...]:
    """A Hugging Face pre-tokenizer (tokenizer.json's `pre_tokenizer`) as the steps PRE_TOKENIZERS
    knows; a step it does not know is described by its type, which matches nothing there."""
    steps = spec.get("pretokenizers", []) if spec and spec.get("type") == "Sequence" else [spec] if spec else []
    out = []
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel" and not step.get("add_prefix_space"):
            out.append("bytelevel" if step.get("use_regex", True) else "bytelevel-noregex")
        elif kind == "Digits" and step.get("individual_digits"):
            out.append("digits")
        elif kind == "Punctuation" and step.get("behavior") == "Isolated":
            out.append("punctuation")
        elif kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert") \
                and "Regex" in (step.get("pattern") or {}):
            out.append(f"split:{step['pattern']['Regex']}")
        else:
            out.append(json.dumps(step, sort_keys=True))
    return tuple(out)


def inert_merge(tokens: list[str], types: list[int]) -> str:
    """A merge that can never fire, for a tokenizer with none (bytes only: a vocabulary too small
    to learn a merge). llama.cpp refuses a gpt2 vocabulary without the merges key and gguf-py
    cannot write an empty array. BPE starts from single characters and only merges make longer
    symbols, so a merge whose left side is a multi-character control token never matches."""
    controls = [t for t, kind in zip(tokens, types) if kind == CONTROL and len(t) > 1 and " " not in t]
    if not controls:
        raise GgufError("export --gguf: the tokenizer has no BPE merges and no special token to write an inert one")
    return f"{controls[0]} {controls[0]}"


def tokenizer_arrays(tokenizer, rows: int) -> dict:
    """What GGUF holds of a byte-level BPE tokenizer for a model with `rows` embedding rows:
    tokens and types in id order, merges as "a b", the pre-tokenizer's llama.cpp name and the
    special token ids (eos; eot: the chat template's end-of-turn token, where generation stops, as
    in answer.stop_token_ids; pad; bos only when the tokenizer has one)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise GgufError(f"export --gguf covers byte-level BPE tokenizers, not a {model.get('type')} model with a "
                        f"{decoder.get('type')} decoder")
    if (spec.get("normalizer") or {}).get("type") not in (None, "NFC"):
        raise GgufError(f"export --gguf: the tokenizer's {spec['normalizer']['type']} normalizer is not covered")
    steps = pre_tokenizer_steps(spec.get("pre_tokenizer"))
    if steps not in PRE_TOKENIZERS:
        raise GgufError(f"export --gguf: llama.cpp has no pre-tokenizer known to split like this tokenizer's "
                        f"({', '.join(s[:40] for s in steps) or 'none'})")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= rows:
        raise GgufError(f"export --gguf: the tokenizer has token id {max(vocab.values())}, the model only {rows} "
                        "embedding rows")
    by_id = {i: t for t, i in vocab.items()}
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(rows):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL if i not in added else CONTROL if added[i].get("special") else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if any(m.count(" ") != 1 for m in merges):
        raise GgufError("export --gguf: a merge has a token with a space in it, which GGUF's 'a b' merges cannot hold")
    if not merges:
        merges = [inert_merge(tokens, types)]
    eot = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    return {"pre": PRE_TOKENIZERS[steps], "tokens": tokens, "types": types, "merges": merges,
            "eos": tokenizer.eos_token_id, "eot": eot if isinstance(eot, int) and eot >= 0 else None,
            "bos": tokenizer.bos_token_id, "pad": tokenizer.pad_token_id}


# --- running it ----------------------------------------------------------------------------------
class GgufEngine:
    """Greedy decoding of a GGUF file in llama.cpp (llama-cpp-python, built from source: in the
    `dev` extra, or alone as the `gguf-test` extra); `generate` has the signature of engine.Engine.generate, and stops at the
    end-of-turn and end-of-sequence tokens the file names (answer.stop_token_ids, written by
    export_gguf). One problem at a time, with llama.cpp's KV cache."""

    def __init__(self, path: str, threads: int = 0):
        try:
            import llama_cpp  # lazy: built from source, needed only to run the file here
        except ImportError:
            raise GgufError("running a GGUF file needs llama-cpp-python: pip install 'reasonlm[gguf-test]'") from None
        if not os.path.isfile(path):
            raise GgufError(f"no GGUF file at {path} (run `reasonlm export RUN --gguf`)")
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=0, n_threads=threads or None, verbose=False)
        meta = self.llm.metadata
        self.stop_ids = {int(meta[k]) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
                         if k in meta}

    def generate(self, prompts: list[list[int]], params, on_token=None) -> list[list[int]]:
        return generate_greedily(prompts, params, lambda prompt: self.llm.generate(prompt, temp=0.0, top_k=1, reset=True),
                                 self.stop_ids, on_token, GgufError, "the llama.cpp runner")
