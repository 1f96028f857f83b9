"""Packing keeps examples apart by position-id resets; models whose layers carry state from token
to token ignore them, so training refuses them in one line (random-weight configs, no download)."""
import pytest
from accelerate import Accelerator
from transformers import LlamaConfig, MambaConfig, MambaForCausalLM, Qwen3NextConfig

from reasonlm.config import TrainConfig
from reasonlm.packing import PackingError, check_packable
from reasonlm.train import fit
from tests.helpers import rows, tiny_model_and_tokenizer


def test_hybrid_linear_attention_config_is_refused():
    config = Qwen3NextConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                             intermediate_size=64, vocab_size=300)
    assert "linear_attention" in config.layer_types and "full_attention" in config.layer_types
    with pytest.raises(PackingError, match=r"^qwen3_next has linear_attention layers") as e:
        check_packable(config)
    assert "\n" not in str(e.value)


def test_plain_attention_configs_pack():
    check_packable(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=300))
    check_packable(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=300,
                               layer_types=["full_attention", "sliding_attention"]))


def test_training_a_state_space_model_stops_before_the_first_step(tmp_path):
    _, tok = tiny_model_and_tokenizer()
    mamba = MambaForCausalLM(MambaConfig(hidden_size=16, state_size=4, num_hidden_layers=2, vocab_size=len(tok)))
    cfg = TrainConfig(full_finetune=True, steps=2, batch_tokens=256, seq_len=128, eval_every=0, save_every=0)
    with pytest.raises(PackingError, match=r"^mamba has linear_attention layers"):
        fit(mamba, tok, rows(50), [], cfg, str(tmp_path), Accelerator(cpu=True))
    assert not (tmp_path / "metrics.jsonl").exists()
