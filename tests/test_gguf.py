"""GGUF export (`reasonlm export RUN --gguf`, reasonlm/gguf.py): the file's tensors, metadata and
tokenizer read back with the `gguf` package; the rope reordering checked against both rope
layouts; the pre-tokenizer llama.cpp is told to use checked to give our token ids. The slow tests
load the file in llama.cpp itself (llama-cpp-python, in the `dev` extra) and check its greedy
answers are PyTorch's, token for token."""
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import gguf  # noqa: E402 (the `gguf` extra, in `dev`)

from reasonlm import modelcard  # noqa: E402
from reasonlm.answer import (encode_prompt, end_of_turn, prompt_messages, render_completion, render_prompt,  # noqa: E402
                             stop_token_ids)
from reasonlm.engine import SamplingParams, engine_for  # noqa: E402
from reasonlm.example import read_dataset  # noqa: E402
from reasonlm.gguf import (CONTROL, GGUF_FILE, NORMAL, UNUSED, GgufEngine, GgufError, export_gguf,  # noqa: E402
                           interleave_rope_rows, tokenizer_arrays)
from reasonlm.model import CHAT_TEMPLATE, build_tiny, ensure_chat_tokens, fit_vocab, load_adapter, train_tokenizer  # noqa: E402
from tests.helpers import chatless_model_and_tokenizer, rows, tiny_model_and_tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(1)

LAYER = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]


def read(path):
    """(metadata key -> value, tensor name -> array in PyTorch's dimension order) of a GGUF file."""
    reader = gguf.GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: np.asarray(t.data).reshape(tuple(reversed([int(d) for d in t.shape]))) for t in reader.tensors}
    return meta, tensors, {t.name: t.tensor_type for t in reader.tensors}


def texts_of(tok, examples):
    """What the model reads and writes: the chat prompts of the questions, and the gold completions
    with the end-of-turn token (as training tokenizes them, answer.encode_example)."""
    return ([render_prompt(tok, prompt_messages(r["question"])) for r in examples]
            + [render_completion(r["steps"], r["answer"]) + end_of_turn(tok) for r in examples])


# --- the file ------------------------------------------------------------------------------------
def test_llama_tensors_metadata_and_tokenizer_read_back(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    path = export_gguf(model, tok, str(tmp_path), "toy")
    assert path == str(tmp_path / GGUF_FILE)
    meta, tensors, types = read(path)
    expected = {"token_embd.weight", "output_norm.weight"} | {f"blk.{b}.{n}.weight" for b in (0, 1) for n in LAYER}
    assert set(tensors) == expected  # tied: no output.weight, llama.cpp uses token_embd
    assert all(t == gguf.GGMLQuantizationType.F32 for t in types.values())
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(tensors["token_embd.weight"], sd["model.embed_tokens.weight"])
    np.testing.assert_array_equal(tensors["blk.1.ffn_down.weight"], sd["model.layers.1.mlp.down_proj.weight"])
    np.testing.assert_array_equal(tensors["blk.0.attn_v.weight"], sd["model.layers.0.self_attn.v_proj.weight"])
    np.testing.assert_array_equal(tensors["blk.0.attn_q.weight"],
                                  interleave_rope_rows(sd["model.layers.0.self_attn.q_proj.weight"], 4))
    assert not np.array_equal(tensors["blk.0.attn_q.weight"], sd["model.layers.0.self_attn.q_proj.weight"])
    c = model.config
    assert meta["general.architecture"] == "llama" and meta["general.name"] == "toy"
    assert (meta["llama.context_length"], meta["llama.embedding_length"], meta["llama.block_count"],
            meta["llama.feed_forward_length"], meta["llama.attention.head_count"],
            meta["llama.attention.head_count_kv"], meta["llama.rope.dimension_count"], meta["llama.vocab_size"]) \
        == (256, 32, 2, 64, 4, 4, 8, len(tok))
    assert meta["llama.rope.freq_base"] == c.rope_parameters["rope_theta"]
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(c.rms_norm_eps)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "default"
    assert meta["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(len(tok))))
    specials = {tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}
    assert [i for i, t in enumerate(meta["tokenizer.ggml.token_type"]) if t == CONTROL] == sorted(specials)
    assert set(meta["tokenizer.ggml.token_type"]) == {NORMAL, CONTROL}
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [" ".join(m) for m in merges] and len(merges) > 0
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert meta["tokenizer.ggml.eos_token_id"] == meta["tokenizer.ggml.eot_token_id"] == im_end
    assert {im_end} == stop_token_ids(tok)
    assert meta["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert "tokenizer.ggml.bos_token_id" not in meta and meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == tok.chat_template


def test_qwen2_keeps_its_biases_and_rope_layout_and_an_untied_output(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    _, tok = tiny_model_and_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok) + 6, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128, tie_word_embeddings=False, rope_theta=1e6))
    meta, tensors, _ = read(export_gguf(model, tok, str(tmp_path)))
    assert meta["general.architecture"] == "qwen2" and meta["qwen2.rope.freq_base"] == 1e6
    assert meta["qwen2.attention.head_count_kv"] == 2
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias", "output.weight"} <= set(tensors)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    np.testing.assert_array_equal(tensors["blk.0.attn_k.weight"], sd["model.layers.0.self_attn.k_proj.weight"])
    np.testing.assert_array_equal(tensors["blk.0.attn_q.bias"], sd["model.layers.0.self_attn.q_proj.bias"])
    np.testing.assert_array_equal(tensors["output.weight"], sd["lm_head.weight"])
    # embedding rows past the tokenizer are unused tokens, as llama.cpp's own converter writes them
    assert meta["tokenizer.ggml.tokens"][-6:] == [f"[PAD{i}]" for i in range(len(tok), len(tok) + 6)]
    assert meta["tokenizer.ggml.token_type"][-6:] == [UNUSED] * 6


def rope(x, pos, pairs):
    """Rotary embedding of one head's vector x at position pos: `pairs="halves"` rotates dimension
    i with i + d/2 (Hugging Face's rotate_half), `"adjacent"` rotates 2i with 2i+1 (llama.cpp's llama)."""
    d = len(x)
    theta = pos * 10000.0 ** (-np.arange(d // 2) * 2 / d)
    cos, sin = np.cos(theta), np.sin(theta)
    a, b = (x[: d // 2], x[d // 2:]) if pairs == "halves" else (x[0::2], x[1::2])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    return np.concatenate([ra, rb]) if pairs == "halves" else np.stack([ra, rb], 1).reshape(-1)


def test_reordered_rows_give_llama_cpp_rope_the_attention_scores_of_hugging_face_rope():
    rng = np.random.default_rng(0)
    heads, d, hidden = 2, 8, 6
    wq, wk = rng.normal(size=(heads * d, hidden)), rng.normal(size=(heads * d, hidden))
    x, y = rng.normal(size=hidden), rng.normal(size=hidden)

    def scores(wq, wk, pairs):
        q, k = (wq @ x).reshape(heads, d), (wk @ y).reshape(heads, d)
        return [rope(q[h], 7, pairs) @ rope(k[h], 3, pairs) for h in range(heads)]

    hf = scores(wq, wk, "halves")
    np.testing.assert_allclose(scores(interleave_rope_rows(wq, heads), interleave_rope_rows(wk, heads), "adjacent"), hf)
    # the inverse reordering (what a converter going the other way would apply) gives other scores
    inverse = lambda w: w.reshape(heads, d // 2, 2, hidden).swapaxes(1, 2).reshape(w.shape)  # noqa: E731
    assert not np.allclose(scores(inverse(wq), inverse(wk), "adjacent"), hf)
    assert not np.allclose(scores(wq, wk, "adjacent"), hf)


# --- the tokenizer --------------------------------------------------------------------------------
# llama.cpp's pre-tokenizers, from src/llama-vocab.cpp (llama-cpp-python 0.3.36's llama.cpp), as
# `tokenizers` Split steps: what llama.cpp does before BPE, to compare ids without llama.cpp.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA_CPP = {"default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
             "smollm": [r"\p{N}", GPT2], "gpt-2": [GPT2]}


def like_llama_cpp(tok, pre: str):
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    emulated = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    emulated.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), "isolated") for r in LLAMA_CPP[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    return lambda text: emulated.encode(text, add_special_tokens=False).ids


def test_the_declared_pre_tokenizer_gives_our_ids_on_eval_texts():
    examples = rows(300, steps=(1, 8), seed=1)
    _, tok = tiny_model_and_tokenizer()
    # a richer vocabulary than the toy's: merges across words, runs of spaces and newlines
    rng = random.Random(0)
    words = ["the", "cat", "has", "apples", "and", "total", "is", "it's", "We've", "3", "12", "+", "=", "(", ")", "..."]
    corpus = [" ".join(rng.choice(words) for _ in range(20)).replace("is ", "is  ") + "\n\n  " for _ in range(2000)]
    rich = train_tokenizer(corpus + texts_of(tok, examples), 1000)
    assert "ĠĠ" in rich.get_vocab()
    for t in (tok, rich):
        pre = tokenizer_arrays(t, len(t))["pre"]
        assert pre == "default"
        split = like_llama_cpp(t, pre)
        assert all(split(text) == t(text, add_special_tokens=False)["input_ids"] for text in texts_of(t, examples))
    prose = " ".join(rng.choice([w for w in words if not w.isdigit()]) for _ in range(3000)).replace("is ", "is  ")
    assert like_llama_cpp(rich, "default")(prose) == rich(prose, add_special_tokens=False)["input_ids"]
    # the one known difference, written down in reasonlm/gguf.py: two spaces right before a digit
    assert like_llama_cpp(rich, "default")("is  3") != rich("is  3", add_special_tokens=False)["input_ids"]


def real_base_like(extra_rows=3):
    """A base model whose tokenizer splits only digits (as SmolLM2's), given the ChatML tokens and
    template the way reasonlm gives them to a base model without any (model.load_tokenizer)."""
    model, tok = chatless_model_and_tokenizer(extra_rows=extra_rows)
    tok.chat_template = CHAT_TEMPLATE
    ensure_chat_tokens(tok)
    fit_vocab(model, tok)
    return model, tok


def test_a_tokenizer_with_single_digits_only_is_smollm_exactly():
    model, tok = real_base_like()
    arrays = tokenizer_arrays(tok, model.get_input_embeddings().num_embeddings)
    assert arrays["pre"] == "smollm"
    assert [arrays["types"][tok.convert_tokens_to_ids(t)] for t in ("<|im_start|>", "<|im_end|>")] == [CONTROL] * 2
    assert arrays["eot"] == tok.convert_tokens_to_ids("<|im_end|>") != arrays["eos"]
    split = like_llama_cpp(tok, "smollm")
    texts = texts_of(tok, rows(100)) + ["a  3  b\n\n 4"]
    assert all(split(t) == tok(t, add_special_tokens=False)["input_ids"] for t in texts)


# --- what it refuses ----------------------------------------------------------------------------
def test_what_is_not_covered_is_one_line_naming_it(tmp_path, monkeypatch):
    from tokenizers import pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel
    model, tok = tiny_model_and_tokenizer()
    with pytest.raises(GgufError, match="covers LlamaForCausalLM, Qwen2ForCausalLM, not GPT2LMHeadModel:"):
        export_gguf(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok))), tok, str(tmp_path))
    model.config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(GgufError, match="rope scaling 'linear' is not covered"):
        export_gguf(model, tok, str(tmp_path))
    model, tok = tiny_model_and_tokenizer()
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(GgufError, match="no pre-tokenizer known to split like"):
        export_gguf(model, tok, str(tmp_path))
    model, tok = tiny_model_and_tokenizer()
    model.resize_token_embeddings(len(tok) - 1)
    with pytest.raises(GgufError, match="the tokenizer has token id"):
        export_gguf(model, tok, str(tmp_path))
    assert not os.path.exists(tmp_path / GGUF_FILE)  # refused before anything was written
    monkeypatch.setitem(sys.modules, "gguf", None)  # the `gguf` extra not installed
    with pytest.raises(GgufError, match=r"needs the gguf package: pip install 'reasonlm\[gguf\]'"):
        export_gguf(model, tok, str(tmp_path))


def test_onnx_and_gguf_together_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "reasonlm", "export", str(tmp_path), "--onnx", "--gguf"],
                       env={**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "error: export: --onnx and --gguf write different folders; choose one"


def test_gguf_card_shows_llama_cpp_ollama_and_python(tmp_path):
    path = modelcard.write_card(str(tmp_path), "gguf", "out/tiny-cpu/base")
    text = open(path, encoding="utf-8").read()
    assert "library_name: gguf" in text
    for line in ("llama-cli -m model.gguf --temp 0", "FROM ./model.gguf", "PARAMETER stop <|im_end|>",
                 "ollama create reasonlm -f Modelfile", 'Llama(model_path="model.gguf"'):
        assert line in text


# --- llama.cpp itself (slow: llama-cpp-python, in the dev extra, is built from source) -------
def llama_cpp_engine(path):
    import llama_cpp  # noqa: F401 (the dev extra: llama.cpp's bindings, a source build)
    return GgufEngine(path, threads=1)


def llama_cpp_logits(path, ids):
    """llama.cpp's logits at every position of `ids`, with a float32 KV cache: the file's weights
    exactly (llama.cpp's default float16 cache, which GgufEngine and llama-cli use, moves the
    trained model's logits by up to ~5e-4 at position 50)."""
    import llama_cpp
    llm = llama_cpp.Llama(model_path=path, n_ctx=0, n_threads=1, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def compare_with_pytorch(model, tok, path, examples, budget):
    """Token round trip, logits and greedy answers of llama.cpp against the tokenizer and PyTorch
    (greedy answers alone could hide a wrong rope: a weak model's argmax barely depends on it)."""
    engine = llama_cpp_engine(path)
    llm = engine.llm
    texts = texts_of(tok, examples)
    assert [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts] == \
        [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    prompts = [encode_prompt(tok, prompt_messages(r["question"])) for r in examples]
    params = SamplingParams(max_new_tokens=budget, batch_size=16)
    torch_ids = engine_for(model.eval(), tok).generate(prompts, params)
    assert engine.stop_ids == stop_token_ids(tok)
    assert engine.generate(prompts, params) == torch_ids
    for prompt, answer in list(zip(prompts, torch_ids))[:4]:
        with torch.no_grad():
            expected = model(torch.tensor([prompt + answer])).logits[0].numpy()
        np.testing.assert_allclose(llama_cpp_logits(path, prompt + answer), expected, atol=1e-4, rtol=1e-3)
    assert [llm.detokenize(ids).decode(errors="replace") for ids in torch_ids] == [tok.decode(ids) for ids in torch_ids]
    return llm, torch_ids


@pytest.mark.slow
@pytest.mark.parametrize("make", ["llama", "qwen2", "smollm-tokenizer", "bytes-only-tokenizer"])
def test_llama_cpp_decodes_a_random_model_like_pytorch(tmp_path, make):
    if make == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM
        _, tok = tiny_model_and_tokenizer()
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=256, tie_word_embeddings=True))
    elif make == "llama":
        model, tok = tiny_model_and_tokenizer()
    elif make == "smollm-tokenizer":
        model, tok = real_base_like()
    else:  # a vocabulary too small to learn a merge: the file carries an inert one
        tok = train_tokenizer(["user", "assistant"] + texts_of(tiny_model_and_tokenizer()[1], rows(50)), vocab_size=259)
        assert not json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
        model = build_tiny(tok, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64, max_position=256)
    compare_with_pytorch(model, tok, export_gguf(model, tok, str(tmp_path)), rows(6), 24)


@pytest.mark.slow
def test_cli_export_of_a_trained_run_answers_50_held_out_problems_like_pytorch(tmp_path):
    from tests.test_train_runs import ARGS, make_run_dir
    make_run_dir(tmp_path)
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    recipe = os.path.join(ROOT, "recipes", "tiny-cpu.yaml")
    subprocess.run([sys.executable, "-m", "reasonlm", "train", recipe, f"out_dir={tmp_path}", *ARGS,
                    "train.save_every=0", "train.lr=1e-2"], env=env, check=True, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "reasonlm", "export", str(tmp_path / "train"), "--gguf"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "train" / "gguf"
    assert "export: wrote" in r.stdout and {"README.md", GGUF_FILE} <= set(os.listdir(out))
    model, tok = load_adapter(str(tmp_path / "base"), str(tmp_path / "train" / "adapter"), merged=True,
                                    device="cpu")
    dataset = read_dataset(str(tmp_path / "data"))
    held_out = [r for split in ("test", "test_ood", "validation") for r in dataset[split]][:50]
    assert len(held_out) == 50  # 20 + 10 + 20: none of them trained on
    llm, torch_ids = compare_with_pytorch(model, tok, str(out / GGUF_FILE), held_out, 64)
    assert len(torch_ids) == 50 and sum(map(len, torch_ids)) > 50 * 5
    # the model card's Python snippet: llama.cpp's chat code with the file's chat template
    reply = llm.create_chat_completion([{"role": "user", "content": held_out[0]["question"]}], temperature=0,
                                       max_tokens=64)
    assert reply["choices"][0]["message"]["content"] == tok.decode(torch_ids[0], skip_special_tokens=True)
