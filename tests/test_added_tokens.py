"""A tokenizer with tokens the base model has no embedding row for (a real base model without
the ChatML markers): training resizes the embeddings, trains them with the adapter
(peft modules_to_save, tied or untied), and inference, export and resume all see the new vocabulary."""
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from reasonlm import checkpoint, data, model as model_mod, outputs, train
from reasonlm.export import export
from reasonlm.answer import encode_prompt, end_of_turn, prompt_messages, stop_token_ids
from reasonlm.config import DataConfig, Recipe, TrainConfig
from reasonlm.engine import KVCacheEngine, SamplingParams
from reasonlm.model import CHAT_TOKENS, fit_vocab, load_adapter, load_tokenizer
from tests.helpers import TINY_TASK, chatless_model_and_tokenizer, tiny_model_and_tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("added-tokens-data")
    cfg = DataConfig(tasks=[{"name": "arithmetic", "args": TINY_TASK}], train_steps=[1, 3], ood_steps=[4, 4],
                     n_train=200, n_validation=8, n_test_per_steps=4, n_base=20, workers=1)
    data.run(Recipe(out_dir=str(path), data=cfg))
    return str(path / "data")


def train_cfg(base, data_dir, **kw):
    settings = dict(steps=4, batch_tokens=512, seq_len=128, lr=1e-2, warmup_steps=1, eval_every=0, eval_samples=0,
                    log_every=0, save_every=2, keep_last=2, lora_r=4, lora_alpha=8)
    return TrainConfig(model=str(base), data=data_dir, **{**settings, **kw})


def save_base(path, model, tok):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def trained(request, data_dir, tmp_path_factory):
    """Train 4 steps on a base whose tokenizer lacks the ChatML tokens; remember the new rows' init."""
    root = tmp_path_factory.mktemp(f"added-{request.param}")
    model, tok = chatless_model_and_tokenizer(tied=request.param)
    base = save_base(root / "base", model, tok)
    init = {}

    def recording_fit_vocab(m, t):
        n = fit_vocab(m, t)
        init["vocab"] = m.get_input_embeddings().weight.shape[0]
        init["emb"] = m.get_input_embeddings().weight[-n:].detach().clone() if n else None
        init["head"] = m.get_output_embeddings().weight[-n:].detach().clone() if n else None
        return n

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "fit_vocab", recording_fit_vocab)  # train calls the name it imported
        train.run(Recipe(out_dir=str(root), threads=1, train=train_cfg(base, data_dir)), "train")
    return {"root": root, "base": str(base), "old_vocab": len(tok), "tied": request.param, **init}


def adapter_tensors(adapter_dir):
    return load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))


def embedding_keys(sd):
    emb = [k for k in sd if "embed_tokens" in k]
    head = [k for k in sd if "lm_head" in k]
    return emb, head


def test_load_tokenizer_adds_the_missing_chat_tokens(tmp_path):
    model, tok = chatless_model_and_tokenizer()
    save_base(tmp_path, model, tok)
    loaded = load_tokenizer(str(tmp_path))
    assert len(loaded) == len(tok) + len(CHAT_TOKENS)
    assert end_of_turn(loaded) == "<|im_end|>"
    ids = encode_prompt(loaded, prompt_messages("1+2"))
    assert loaded.convert_tokens_to_ids("<|im_start|>") in ids  # one token, not pieces
    assert loaded.decode(ids, skip_special_tokens=True).count("<|im_") == 0
    assert fit_vocab(model, loaded) == 2
    assert model.get_input_embeddings().weight.shape[0] == len(loaded)
    assert model.get_output_embeddings().weight.shape[0] == len(loaded)


def test_tokens_added_into_a_padded_vocabulary_still_count(tmp_path):
    """Qwen-style: embedding rows beyond the tokenizer; the new tokens fit, no resize, but untrained."""
    model, tok = chatless_model_and_tokenizer(extra_rows=8)
    save_base(tmp_path, model, tok)
    loaded = load_tokenizer(str(tmp_path))
    assert fit_vocab(model, loaded) == 2
    assert model.get_input_embeddings().weight.shape[0] == len(tok) + 8


def test_added_tokens_are_trained_and_saved_with_the_adapter(trained):
    adapter = trained["root"] / "train" / "adapter"
    new_vocab = trained["old_vocab"] + len(CHAT_TOKENS)
    assert trained["vocab"] == new_vocab
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert any("embed_tokens" in m for m in config["modules_to_save"])
    assert config["ensure_weight_tying"] == trained["tied"]
    sd = adapter_tensors(adapter)
    emb, head = embedding_keys(sd)
    assert emb and head, sorted(sd)
    assert all(sd[k].shape == (new_vocab, 32) for k in emb + head)
    assert len(emb) == len(head) == 1  # only the trained copies, not the frozen originals as well
    trained_emb, trained_head = sd[emb[0]][-2:], sd[head[0]][-2:]
    assert not torch.allclose(trained_emb, trained["emb"], atol=1e-4)  # the new rows learned
    assert not torch.allclose(trained_head, trained["head"], atol=1e-4)
    if trained["tied"]:
        assert torch.equal(sd[emb[0]], sd[head[0]])
    else:
        assert not torch.equal(sd[emb[0]], sd[head[0]])


def new_vocab_logits(model, tok):
    ids = torch.tensor([encode_prompt(tok, prompt_messages("2+3"))])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_inference_and_peft_loading_use_the_new_vocabulary(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = str(trained["root"] / "train" / "adapter")
    model, tok = load_adapter(trained["base"], adapter)
    new_vocab = trained["old_vocab"] + len(CHAT_TOKENS)
    assert len(tok) == new_vocab
    logits = new_vocab_logits(model, tok)
    assert logits.shape[-1] == new_vocab
    out = KVCacheEngine(model, tok.pad_token_id, stop_token_ids(tok)).generate(
        [encode_prompt(tok, prompt_messages("2+3"))], SamplingParams(max_new_tokens=6))
    assert 0 < len(out[0]) <= 6 and max(out[0]) < new_vocab
    # plain peft: a base resized to the new vocabulary takes the adapter as saved
    base = AutoModelForCausalLM.from_pretrained(trained["base"])
    base.resize_token_embeddings(new_vocab)
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    assert torch.allclose(new_vocab_logits(peft_model, tok), logits, atol=1e-5)


def test_export_with_and_without_merge(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = str(trained["root"] / "train")
    model, tok = load_adapter(trained["base"], os.path.join(run_dir, "adapter"))
    reference = new_vocab_logits(model, tok)
    new_vocab = len(tok)

    merged_dir = export(run_dir, merge=True)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert merged.config.vocab_size == new_vocab
    assert merged.config.tie_word_embeddings == trained["tied"]
    assert torch.allclose(new_vocab_logits(merged, tok), reference, atol=1e-4)
    m2, tok2 = load_adapter(merged_dir)  # what `reasonlm chat --merged`-style loading does
    assert len(tok2) == new_vocab
    out = KVCacheEngine(m2, tok2.pad_token_id, stop_token_ids(tok2)).generate(
        [encode_prompt(tok2, prompt_messages("2+3"))], SamplingParams(max_new_tokens=6))
    assert 0 < len(out[0]) <= 6

    adapter_dir = export(run_dir, merge=False)
    assert os.path.isfile(os.path.join(adapter_dir, "tokenizer.json"))
    base = AutoModelForCausalLM.from_pretrained(trained["base"])
    base.resize_token_embeddings(len(load_tokenizer(adapter_dir)))
    exported = PeftModel.from_pretrained(base, adapter_dir).eval()
    assert torch.allclose(new_vocab_logits(exported, tok), reference, atol=1e-5)


def test_resume_restores_the_trained_embeddings(trained, data_dir, tmp_path):
    """Rerun from the step-2 checkpoint: the final adapter equals the uninterrupted run's."""
    src = trained["root"]
    shutil.copytree(src / "base", tmp_path / "base")
    os.makedirs(tmp_path / "train")
    ckpts = checkpoint.checkpoints(str(src / "train"))
    assert [os.path.basename(c) for c in ckpts] == ["checkpoint-0000002"]
    shutil.copytree(ckpts[0], tmp_path / "train" / os.path.basename(ckpts[0]))
    shutil.copy(src / "train" / outputs.MARKER, tmp_path / "train")  # the run folder train wrote, moved
    train.run(Recipe(out_dir=str(tmp_path), threads=1, train=train_cfg(tmp_path / "base", data_dir)), "train")
    first, resumed = adapter_tensors(src / "train" / "adapter"), adapter_tensors(tmp_path / "train" / "adapter")
    assert sorted(first) == sorted(resumed)
    for k in first:
        assert torch.allclose(first[k], resumed[k], atol=1e-6), k


def test_no_added_tokens_no_modules_to_save(data_dir, tmp_path):
    model, tok = tiny_model_and_tokenizer()
    base = save_base(tmp_path / "base", model, tok)
    assert len(load_tokenizer(str(base))) == len(tok)  # the tiny tokenizer already has the ChatML tokens
    train.run(Recipe(out_dir=str(tmp_path), threads=1, train=train_cfg(base, data_dir, save_every=0)), "train")
    adapter = tmp_path / "train" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["modules_to_save"] is None
    sd = adapter_tensors(adapter)
    assert sd and all("lora_" in k for k in sd)
    emb_params = model.get_input_embeddings().weight.numel()
    assert sum(v.numel() for v in sd.values()) < emb_params  # small: no embedding copy


def test_explicit_modules_to_save(data_dir, tmp_path):
    model, tok = tiny_model_and_tokenizer()
    base = save_base(tmp_path / "base", model, tok)
    train.run(Recipe(out_dir=str(tmp_path), threads=1, train=train_cfg(base, data_dir, save_every=0, steps=2, modules_to_save=["lm_head"])), "train")
    adapter = tmp_path / "train" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["ensure_weight_tying"] is True  # the tiny model ties lm_head to the input embedding
    emb, head = embedding_keys(adapter_tensors(adapter))
    assert emb and head
    load_adapter(str(base), str(adapter))


def test_modules_to_save_that_match_nothing_are_an_error():
    model, _ = tiny_model_and_tokenizer()
    with pytest.raises(model_mod.ModelError, match="modules_to_save: nonexistent match no module"):
        model_mod.attach_lora(model, TrainConfig(lora_r=4), ["nonexistent"])
