"""Devices and launch configs: `device=` is validated and resolved (CUDA > MPS > CPU), an
unavailable device is one line, and recipes/accelerate/fsdp.yaml says only what is true."""
import logging
import os
import subprocess
import sys
import warnings
from unittest import mock

import pytest
import torch
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_multi_gpu_env

from reasonlm.config import ConfigError, load_recipe
from reasonlm.model import ModelError, load_adapter, resolve_device
from tests.helpers import ROOT, tiny_model_and_tokenizer

FSDP = os.path.join(ROOT, "recipes", "accelerate", "fsdp.yaml")
NO_GPU = not torch.cuda.is_available()


# --- device= -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_device_accepts_the_documented_values(value):
    assert load_recipe(None, [f"device={value}"]).device == value


@pytest.mark.parametrize("value", ["gpu", "cuda:-1", "cuda:x", "CPU", "", "tpu"])
def test_device_rejects_anything_else_in_one_line(value):
    with pytest.raises(ConfigError, match=r"^device must be auto, cpu, cuda, cuda:N or mps, got"):
        load_recipe(None, [f"device={value}"])


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(cuda, mps, expected):
    with mock.patch("torch.cuda.is_available", return_value=cuda), \
         mock.patch("torch.backends.mps.is_available", return_value=mps):
        assert resolve_device("auto").type == expected


def test_unavailable_devices_are_one_line_errors():
    with mock.patch("torch.cuda.is_available", return_value=False), \
         mock.patch("torch.backends.mps.is_available", return_value=False):
        for name in ("cuda", "cuda:0", "mps"):
            with pytest.raises(ModelError, match=f"^device={name}: ") as e:
                resolve_device(name)
            assert "\n" not in str(e.value)
    with mock.patch("torch.cuda.is_available", return_value=True), mock.patch("torch.cuda.device_count", return_value=2):
        with pytest.raises(ModelError, match="has 2 CUDA GPU"):
            resolve_device("cuda:2")


def test_cpu_override_places_the_model_on_the_cpu(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, _ = load_adapter(str(tmp_path), device="cpu")
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}


@pytest.mark.slow
@pytest.mark.skipif(not NO_GPU, reason="needs a machine without CUDA")
def test_cli_with_a_missing_device_exits_with_one_line(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    r = subprocess.run([sys.executable, "-m", "reasonlm", "train", os.path.join(ROOT, "recipes", "tiny-cpu.yaml"),
                        f"out_dir={tmp_path}", "device=cuda"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert r.returncode == 2, r.stderr[-1000:]
    lines = [l for l in r.stderr.splitlines() if l.strip() and "WARNING" not in l]
    assert lines == [lines[0]] and lines[0].startswith("error: device=cuda: no CUDA GPU"), r.stderr[-1000:]


# --- recipes/accelerate/fsdp.yaml ----------------------------------------------------------------
def launcher_env(config_file):
    """The environment `accelerate launch --config_file FILE` gives its processes."""
    args = launch_command_parser().parse_args(["--config_file", config_file, "--num_processes", "2", "train.py"])
    args, _, _ = _validate_launch_command(args)
    return prepare_multi_gpu_env(args)


def test_fsdp_config_is_parsed_by_accelerate_into_an_fsdp2_plugin():
    env = launcher_env(FSDP)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.cpu_ram_efficient_loading is True
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"


# the launcher's key for one plugin field whose name differs
PLUGIN_FIELD = {"offload_params": "cpu_offload"}


def fsdp2_warnings(caplog, key, value):
    """Warnings Accelerate's FSDP2 plugin gives (as warnings or log records) when `key` (a
    fsdp_config key) is set explicitly."""
    name = key if key == "fsdp_version" else key.removeprefix("fsdp_")
    kwargs = {"fsdp_version": 2, PLUGIN_FIELD.get(name, name): value}
    if isinstance(value, str):
        kwargs[PLUGIN_FIELD.get(name, name)] = value.lower() if name == "auto_wrap_policy" else value
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        FullyShardedDataParallelPlugin(**kwargs)
    return [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]


def test_every_fsdp_option_is_an_fsdp2_option(caplog):
    import yaml
    with open(FSDP) as f:
        options = yaml.safe_load(f)["fsdp_config"]
    for key, value in options.items():
        assert fsdp2_warnings(caplog, key, value) == [], key
    # the check sees what it is there for: the FSDP1 option the file used to carry
    assert any("obsolete" in w for w in fsdp2_warnings(caplog, "fsdp_use_orig_params", True))


@pytest.mark.slow
@pytest.mark.skipif(not NO_GPU, reason="on GPUs this launch really runs FSDP")
def test_fsdp_launch_on_cpu_processes_is_refused_in_one_line(tmp_path):
    """Accelerate would run this launch as plain DDP on CPUs; the train stage says so and stops."""
    from tests.test_train_runs import ARGS, make_run_dir
    make_run_dir(tmp_path)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    r = subprocess.run([accelerate, "launch", "--config_file", FSDP, "--num_processes", "2", "--mixed_precision", "no",
                        "-m", "reasonlm", "train", os.path.join(ROOT, "recipes", "tiny-cpu.yaml"), f"out_dir={tmp_path}",
                        *ARGS], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode != 0
    errors = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
    assert errors and all("asks for FSDP, but Accelerate runs FSDP only on GPUs" in l for l in errors), r.stderr[-2000:]
    assert not (tmp_path / "train" / "adapter").exists()
