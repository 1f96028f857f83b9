"""Never run a stranger's code (issue 17, items 5 and 6), and a full disk while training (item 4):
a checkpoint folder or an adapter with a pickle in it is refused or skipped without unpickling,
and the loop's own state (scheduler, random generators, position) is saved as JSON/safetensors."""
import errno
import os
import shutil

import pytest
import torch
from accelerate import Accelerator

from reasonlm import checkpoint, data
from reasonlm.config import DataConfig, Recipe, TrainConfig
from reasonlm.model import ModelError, attach_lora, load_adapter, load_model
from tests.helpers import TINY_TASK, tiny_model_and_tokenizer
from tests.test_outputs import RECIPE, one_line_error, run_cli

TRAIN = ["train.steps=6", "train.save_every=2", "train.keep_last=3", "train.batch_tokens=512", "train.seq_len=128",
         "train.warmup_steps=1", "train.eval_every=0", "train.eval_samples=0", "train.log_every=0", "train.lora_r=4",
         "train.lora_alpha=8", "threads=1"]


class Payload:
    """What an attacker plants: unpickling it creates `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(path, marker):
    torch.save(Payload(marker), path)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """<out>/data and <out>/base (a toy model): what `reasonlm train` needs."""
    out = tmp_path_factory.mktemp("toyrun")
    data.run(Recipe(out_dir=str(out), data=DataConfig(
        tasks=[{"name": "arithmetic", "args": TINY_TASK}], train_steps=[1, 3], ood_steps=[4, 4],
        n_train=200, n_validation=10, n_test_per_steps=2, n_base=10, workers=1)))
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(out / "base")
    tok.save_pretrained(out / "base")
    return out


def fresh_run(toy_run, tmp_path):
    for part in ("data", "base"):
        shutil.copytree(toy_run / part, tmp_path / part)
    return tmp_path


def train(capsys, out, *extra) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `reasonlm train` on the toy run."""
    from reasonlm import cli
    try:
        cli.main(["train", RECIPE, f"out_dir={out}", *TRAIN, *extra])
        code = 0
    except SystemExit as e:
        code = e.code
    printed = capsys.readouterr()
    return code, printed.out, printed.err


# --- item 5: resume never unpickles -----------------------------------------------------------
def test_checkpoints_hold_the_loops_state_without_pickles_of_ours(toy_run, tmp_path, capsys):
    out = fresh_run(toy_run, tmp_path)
    assert train(capsys, out)[0] == 0
    ckpt = out / "train" / "checkpoint-0000004"
    names = set(os.listdir(ckpt))
    assert {"scheduler.json", "rng_state_0.safetensors", "train_state.json", "model.safetensors"} <= names
    assert not [n for n in names if n.startswith("custom_checkpoint")]  # the scheduler's old pickle


def test_a_planted_pickle_in_a_checkpoint_never_runs(toy_run, tmp_path, capsys):
    out = fresh_run(toy_run, tmp_path)
    assert train(capsys, out, "train.steps=8")[0] == 0  # checkpoints at 2, 4 and 6
    marker = tmp_path / "pwned"
    run = out / "train"
    # the scheduler file Accelerate unpickles in full when an object is registered, the optimizer
    # state and the random states it loads with torch.load: one planted file in each checkpoint
    plant(run / "checkpoint-0000006" / "custom_checkpoint_0.pkl", marker)
    plant(run / "checkpoint-0000004" / "optimizer.bin", marker)
    plant(run / "checkpoint-0000002" / "random_states_0.pkl", marker)
    code, printed, err = train(capsys, out, "train.steps=8")  # the same run: a new step count is another run
    assert code == 0, err
    assert not marker.exists()
    for skipped in ("checkpoint-0000006: RuntimeError", "checkpoint-0000004: UnpicklingError"):
        assert f"warning: skipping unreadable checkpoint {run / skipped}" in printed
    assert f"resuming from {run / 'checkpoint-0000002'} (step 2)" in printed  # its random states were refused


def test_resume_restores_the_schedule_and_the_random_state(toy_run, tmp_path, capsys):
    out = fresh_run(toy_run, tmp_path)
    assert train(capsys, out)[0] == 0
    ckpt = str(out / "train" / "checkpoint-0000004")
    accelerator = Accelerator(cpu=True)
    model, _ = tiny_model_and_tokenizer()
    model = attach_lora(model, TrainConfig(lora_r=4, lora_alpha=8))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    torch.manual_seed(123)
    step, state = checkpoint.try_resume(accelerator, model, str(out / "train"), scheduler)
    assert step == 4 and state["step"] == 4 and scheduler.last_epoch == 4
    restored = torch.rand(3)
    checkpoint.load_rng_state(ckpt, 0)
    assert torch.equal(torch.rand(3), restored)  # the generator is the checkpoint's, not seed 123's


# --- item 4, training: a full disk while saving a checkpoint ----------------------------------
def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary(toy_run, tmp_path, capsys, monkeypatch):
    out = fresh_run(toy_run, tmp_path)
    save_state = Accelerator.save_state

    def full(self, directory, *a, **k):
        save_state(self, directory, *a, **k)  # the weights are written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", full)
    code, _, err = train(capsys, out)
    line = one_line_error(err)
    assert code == 2 and line.startswith("error: no space left on /")
    assert f"while writing {out / 'train' / 'checkpoint-0000002'};" in line
    assert [n for n in os.listdir(out / "train") if n.endswith((".tmp", ".old"))] == []
    assert not (out / "train" / "adapter").exists()


# --- item 6: a pickled adapter ----------------------------------------------------------------
@pytest.fixture(scope="module")
def pickled_adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("pickled")
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(out / "base")
    tok.save_pretrained(out / "base")
    lora = attach_lora(load_model(str(out / "base")), TrainConfig(lora_r=2, lora_alpha=4))
    lora.save_pretrained(out / "adapter", safe_serialization=False)
    assert os.path.exists(out / "adapter" / "adapter_model.bin")
    return out


@pytest.mark.parametrize("weights", ["state dict", "payload"])
def test_a_pickled_adapter_is_refused_in_one_line(pickled_adapter, tmp_path, capsys, weights):
    adapter = tmp_path / "adapter"
    shutil.copytree(pickled_adapter / "adapter", adapter)
    marker = tmp_path / "pwned"
    if weights == "payload":
        plant(adapter / "adapter_model.bin", marker)
    code, err = run_cli(capsys, "export", str(adapter), "--merge", "--out", str(tmp_path / "merged"))
    assert code == 2 and "holds its weights as a pickle (adapter_model.bin)" in one_line_error(err)
    with pytest.raises(ModelError, match="safe_serialization=True"):
        load_adapter(str(pickled_adapter / "base"), str(adapter))
    assert not marker.exists() and not (tmp_path / "merged").exists()


@pytest.mark.parametrize("stage", ["rl", "eval", "chat", "export", "load_adapter"])
def test_every_stage_that_loads_an_adapter_refuses_a_pickled_one(pickled_adapter, tmp_path, capsys, stage):
    """model.load_adapter is the one loader (RL included, which once skipped the check): an
    adapter holding only adapter_model.bin is one line and a non-zero exit, and nothing unpickles."""
    adapter, marker, base = tmp_path / "adapter", tmp_path / "pwned", str(pickled_adapter / "base")
    shutil.copytree(pickled_adapter / "adapter", adapter)
    plant(adapter / "adapter_model.bin", marker)
    assert not (adapter / "adapter_model.safetensors").exists()
    if stage == "load_adapter":
        with pytest.raises(ModelError, match="holds its weights as a pickle"):
            load_adapter(base, str(adapter), trainable=True, device=None)  # RL's call
        assert not marker.exists()
        return
    suite = tmp_path / "suite.yaml"
    suite.write_text("sources: [{task: arithmetic, steps: [1, 2], n_per_steps: 1}]\n")
    argv = {"rl": ["rl", RECIPE, f"out_dir={tmp_path / 'run'}", f"rl.model={base}", f"rl.adapter={adapter}",
                   "rl.preflight_problems=2", "threads=1"],
            "eval": ["eval", str(suite), "--model", base, "--adapter", str(adapter), "--out", str(tmp_path / "run")],
            "chat": ["chat", "--model", base, "--adapter", str(adapter), "-p", "1+1"],
            "export": ["export", str(adapter), "--merge", "--out", str(tmp_path / "merged")]}[stage]
    code, err = run_cli(capsys, *argv)
    assert code == 2 and "holds its weights as a pickle (adapter_model.bin)" in one_line_error(err)
    assert not marker.exists() and not (tmp_path / "run" / "rl" / "adapter").exists()


def test_train_run_alone_loads_a_pretrained_base_model_not_out_dir_base(toy_run, tmp_path):
    """base.model names a pretrained model (a Hub id or a path) and train.model is empty: `reasonlm
    train` run alone trains on base.model (config.base_model), which the base stage never copies
    to <out_dir>/base."""
    from reasonlm import modelcard, train
    from reasonlm.config import load_recipe
    recipe = load_recipe(RECIPE, [f"out_dir={tmp_path}", f"base.model={toy_run / 'base'}",
                                  f"train.data={toy_run / 'data'}", *TRAIN, "train.steps=1", "train.save_every=0"])
    assert recipe.train.model == "" and not (tmp_path / "base").exists()
    adapter = train.run(recipe)
    assert adapter == str(tmp_path / "train" / "adapter")
    assert modelcard.recorded_base(adapter) == str(toy_run / "base")


# --- issue 30, fault 2: a checkpoint is resumed only by the run it was made from ------------------
def test_a_checkpoint_made_from_other_settings_or_inputs_is_never_resumed(toy_run, tmp_path, capsys):
    """`reasonlm train` after a change of train.lr (or of its base) once resumed the old run's
    checkpoint and trained on at the new rate; now it stops in one line before writing anything,
    and with train.resume=never it starts over."""
    from tests.test_outputs import tree
    out = fresh_run(toy_run, tmp_path)
    assert train(capsys, out)[0] == 0  # checkpoints at 2 and 4 of 6
    run = out / "train"
    before = tree(run)
    newest = run / "checkpoint-0000004"
    code, _, err = train(capsys, out, "train.lr=1e-4")
    assert code == 2 and one_line_error(err) == (
        f"error: {newest} was made from other settings than this run's, so it will not be resumed (that would mix "
        f"two runs): set train.resume=never to start over (its checkpoints are then removed), or restore the "
        f"settings and inputs it was made from")
    assert tree(run) == before  # config.yaml, metrics, checkpoints and adapter as they were
    model, tok = tiny_model_and_tokenizer(seed=1)  # the base made again, otherwise
    model.save_pretrained(out / "base")
    code, _, err = train(capsys, out)
    assert code == 2 and f"{newest} was made from other base than this run's" in one_line_error(err)
    assert tree(run) == before
    shutil.copytree(toy_run / "base", out / "base", dirs_exist_ok=True)  # the same base again (a copy): resumed
    code, printed, _ = train(capsys, out)
    assert code == 0 and f"resuming from {newest} (step 4)" in printed
    code, printed, _ = train(capsys, out, "train.lr=1e-4", "train.resume=never")
    assert code == 0 and "resuming" not in printed
    # the new run's checkpoints replaced the old ones: the new settings resume them, the old are refused
    code, printed, _ = train(capsys, out, "train.lr=1e-4")
    assert code == 0 and f"resuming from {newest} (step 4)" in printed
    assert train(capsys, out)[0] == 2
