"""What a training run writes and reads back: resumable checkpoints, the final weights, and the
metrics log trimmed to a resumed step.

The training loops (train.py: base pretraining and SFT; rl/) save and resume through here, so
a checkpoint has one layout and one loader: a run killed at any point continues from its last
checkpoint to the same final weights. Nothing here knows what is being trained or how.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil

import numpy as np
import torch
from accelerate.utils.constants import SAFE_MODEL_NAME
from peft.utils import ModulesToSaveWrapper
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from reasonlm import modelcard, outputs
from reasonlm.config import config_hash, save_resolved


def checkpoints(run_dir: str) -> list[str]:
    """Complete checkpoints (they hold train_state.json, written last), oldest first."""
    if not os.path.isdir(run_dir):
        return []
    names = sorted(d for d in os.listdir(run_dir) if d.startswith("checkpoint-") and not d.endswith(".tmp"))
    return [os.path.join(run_dir, d) for d in names if os.path.isfile(os.path.join(run_dir, d, "train_state.json"))]


class DivergedError(ValueError):
    """A loss that is not finite: the run stopped before saving anything made from it."""


def stop_if_diverged(loss: float, where: str, run_dir: str, hint: str, params=()) -> None:
    """A NaN or infinite loss (or, given `params`, a weight that is no longer finite: a blown-up
    step whose next round has nothing to train on logs a loss of 0) stops the run (training's
    steps, RL's rounds) before its weights reach a checkpoint or the final output, naming the last
    good checkpoint."""
    if not math.isfinite(loss):
        what = f"loss is {loss}"
    elif any(not torch.isfinite(p).all() for p in params):
        what = "the weights are no longer finite"
    else:
        return
    last = checkpoints(run_dir)
    raise DivergedError(f"{what} at {where}; stopped. Last good checkpoint: {last[-1] if last else 'none'}. {hint}")


# --- what a checkpoint was made from (settings: config.config_hash) -------------------------------
RUN_FILES = ("config.yaml", "metrics.jsonl", "loss.png", "train_stats.json")  # a training run directory's own files


class ResumeError(ValueError):
    """A checkpoint made from other settings or inputs than the run that would resume it."""


def made_from(cfg, out_dir: str, inputs: dict[str, str]) -> dict:
    """What a run's checkpoints record they were made from: the stage's settings hash (config_hash,
    the pipeline's own) and a content hash of each input (`inputs`: name -> the dataset, the base
    model, the starting adapter). try_resume refuses a checkpoint whose record differs."""
    return {"settings": config_hash(cfg, out_dir), "inputs": {k: input_hash(v) for k, v in sorted(inputs.items())}}


INPUT_NEUTRAL = {"README.md", outputs.MARKER}  # the card the pipeline rewrites with eval results; the marker


def input_hash(path: str) -> str:
    """sha256 of an input: a folder's files (relative names and bytes, every subfolder, less
    INPUT_NEUTRAL), a file's bytes, or, for a name that is no local path (a Hub id), the name. A
    copied or moved input hashes the same; a dataset or model made again with other settings does not."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for d, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                if name in INPUT_NEUTRAL and d == path:
                    continue
                h.update(os.path.relpath(os.path.join(d, name), path).encode() + b"\0")
                with open(os.path.join(d, name), "rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
    elif os.path.isfile(path):
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    else:
        h.update(f"name:{path}".encode())
    return h.hexdigest()


def check_made_from(ckpt: str, state: dict, expected: dict, fresh: str) -> None:
    """Refuse to resume `ckpt` (its train_state.json: `state`) unless it records being made from
    `expected` (made_from); `fresh` says how to start over instead (set rl.resume=never ...)."""
    recorded = state.get("made_from")
    if recorded == expected:
        return
    if not isinstance(recorded, dict):
        what = "records nothing of what it was made from (an older reasonlm)"
    else:
        changed = (["settings"] if recorded.get("settings") != expected["settings"] else []) + [
            k for k in sorted(set(expected["inputs"]) | set(recorded.get("inputs") or {}))
            if (recorded.get("inputs") or {}).get(k) != expected["inputs"].get(k)]
        what = f"was made from other {' and '.join(changed) or 'inputs'} than this run's"
    raise ResumeError(f"{ckpt} {what}, so it will not be resumed (that would mix two runs): {fresh}, "
                      f"or restore the settings and inputs it was made from")


def check_resumable(run_dir: str, record: dict, resume: str, fresh: str) -> None:
    """Before a run writes anything (its config.yaml first): with resume 'auto', stop in one line
    (check_made_from) when the checkpoint it would resume was made from anything but `record`."""
    for ckpt in reversed(checkpoints(run_dir) if resume == "auto" else []):
        try:
            with open(os.path.join(ckpt, "train_state.json")) as f:
                state = json.load(f)
        except (OSError, ValueError):  # unreadable: try_resume skips it, and checks the next one it loads
            continue
        check_made_from(ckpt, state if isinstance(state, dict) else {}, record, fresh)
        return


def resume_or_start(accelerator, model, run_dir: str, scheduler, resume: str, record: dict, fresh: str):
    """(step, state) to continue from: with resume 'auto' the newest checkpoint that loads, refused
    unless it was made from `record` (check_made_from); with 'never' none, and the run's earlier
    checkpoints are removed (this stage's own, in its own run directory), so that none of them is
    resumed later or outlives the new run's under keep_last."""
    if resume == "auto":
        return try_resume(accelerator, model, run_dir, scheduler, record, fresh)
    if accelerator.is_main_process:
        for old in checkpoints(run_dir):
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return 0, {}


# A checkpoint is checkpoint-<step>/ holding: Accelerate's save_state (the trainable weights as
# safetensors; the optimizer state, which Accelerate loads back with torch.load(weights_only=True));
# the state the loop owns, never pickled: the learning-rate schedule (scheduler.json), every
# process's random generators (rng_state_<rank>.safetensors, Python's and numpy's in its metadata)
# and the data position with the best score so far (train_state.json, written last: a checkpoint
# without it is incomplete). The data order is a function of the step (Batches), so the step is
# the whole sampler position. Nothing is registered with Accelerate's register_for_checkpointing,
# whose custom_checkpoint_<i>.pkl it would load with full unpickling; a folder that holds one
# anyway (an older checkpoint, or a planted file) makes Accelerate refuse it, and it is skipped.
SCHEDULER_STATE = "scheduler.json"


def save_checkpoint(accelerator, run_dir: str, step: int, keep_last: int, scheduler, extra: dict):
    """checkpoint-<step>: Accelerate's state (weights, optimizer), this process's random state, the
    schedule (`scheduler` may be None: a loop with a constant rate, like RL's) and `extra` as JSON."""
    final = os.path.join(run_dir, f"checkpoint-{step:07d}")
    tmp = final + ".tmp"
    main = accelerator.is_main_process
    with outputs.writing(final, *([tmp] if main else [])):  # a full disk: no half checkpoint left
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)
        save_rng_state(tmp, accelerator.process_index)
        accelerator.wait_for_everyone()
        if main:
            if scheduler is not None:
                outputs.atomic_write(os.path.join(tmp, SCHEDULER_STATE), json.dumps(scheduler.state_dict()))
            outputs.atomic_write(os.path.join(tmp, "train_state.json"), json.dumps({"step": step, **extra}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_rng_state(directory: str, rank: int) -> None:
    """This process's random generators: torch's (CPU and every GPU) as tensors, Python's and
    numpy's as JSON in the file's metadata."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    meta = {"python": json.dumps(random.getstate()),
            "numpy": json.dumps([kind, keys.tolist(), pos, has_gauss, gauss])}
    save_file(tensors, os.path.join(directory, f"rng_state_{rank}.safetensors"), metadata=meta)


def load_rng_state(directory: str, rank: int) -> bool:
    """Restore what save_rng_state wrote; False when the file is missing (another process count)."""
    path = os.path.join(directory, f"rng_state_{rank}.safetensors")
    if not os.path.isfile(path):
        return False
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        torch.set_rng_state(f.get_tensor("torch"))
        cuda = sorted((k for k in f.keys() if k.startswith("cuda_")), key=lambda k: int(k.split("_")[1]))
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([f.get_tensor(k) for k in cuda])
    version, internal, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return True


def try_resume(accelerator, model, run_dir: str, scheduler, record: dict | None = None,
               fresh: str = "start over with resume=never") -> tuple[int, dict]:
    """Load the newest checkpoint that loads (`scheduler` None: a loop without a schedule); skip
    (and say so) any that is corrupt. Given `record` (made_from), a checkpoint made from anything
    else is refused in one line (check_made_from), never loaded."""
    for ckpt in reversed(checkpoints(run_dir)):
        try:
            with open(os.path.join(ckpt, "train_state.json")) as f:
                state = json.load(f)
            if record is not None:
                check_made_from(ckpt, state, record, fresh)
            schedule = None
            if scheduler is not None:
                with open(os.path.join(ckpt, SCHEDULER_STATE)) as f:
                    schedule = json.load(f)
            accelerator.load_state(ckpt, strict=False)
            load_weights_unwrapped(accelerator.unwrap_model(model), ckpt)
            if scheduler is not None:
                scheduler.load_state_dict(schedule)
        except ResumeError:
            raise
        except Exception as e:  # a half-written, damaged or foreign checkpoint: fall back to an older one
            accelerator.print(f"warning: skipping unreadable checkpoint {ckpt}: {type(e).__name__}: {str(e)[:100]}")
            continue
        if not load_rng_state(ckpt, accelerator.process_index):
            print(f"warning: {ckpt} has no random state for process {accelerator.process_index}; "
                  f"continuing with a fresh one (dropout draws differ from an uninterrupted run)")
        accelerator.print(f"resuming from {ckpt} (step {state['step']})")
        return state["step"], state
    return 0, {}


def load_weights_unwrapped(model, ckpt: str) -> None:
    """The checkpoint's weights loaded into the unwrapped model once more. Accelerate loads them
    into the model it registered, which on GPUs is the DDP wrapper: with strict=False the saved
    adapter's keys (no 'module.' prefix) would match nothing and load nothing, silently. A key the
    model does not have is an error (a foreign checkpoint, skipped by try_resume)."""
    path = os.path.join(ckpt, f"{SAFE_MODEL_NAME}.safetensors")
    if not os.path.isfile(path):  # FSDP saves its own way, and loads it in load_state
        return
    weights = {k.removeprefix("module."): v for k, v in load_file(path).items()}
    unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise ValueError(f"{len(unexpected)} weights the model does not have, e.g. {unexpected[0]}")


def trainable_state_dict(model) -> dict:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def keep_metrics_until(path: str, step: int, key: str = "step") -> None:
    """Drop the lines of a JSON-lines log whose `key` is past `step` (all of them when starting
    over): after a resume the file, and the curves drawn from it, hold each step once."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # the last line of a run killed while writing it
                break
            if record[key] <= step:
                kept.append(line)
    outputs.atomic_write(path, "".join(kept))


def save_weights(accelerator, model, tokenizer, path: str, cfg, stage: str = "train",
                 data_dir: str | None = None):
    """save_pretrained (adapter or full model) + tokenizer + `cfg` (the stage's settings, as
    config.yaml) + the model card (README.md, linking the dataset card of `data_dir`), written to a temp dir then renamed. `path` is replaced only
    if `stage` wrote it (outputs.py: the base stage saves the base, the training loop everything
    else). The base stage's model gets no card: it is an input to the run, not its result.

    Call it on every process: under FSDP the state dict is gathered from all of them.
    """
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    outputs.check_replaceable(path, stage)
    tmp = outputs.fresh_temporary(path, stage)
    unwrapped = accelerator.unwrap_model(model)
    extra = {}
    if embeddings_in_modules_to_save(unwrapped):
        # their trained copies are saved already; peft's "auto" would add the frozen originals too
        extra["save_embedding_layers"] = False
    with outputs.writing(path, tmp):
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True, **extra)
        tokenizer.save_pretrained(tmp)
        save_resolved(cfg, tmp)
        if stage != "base":  # no eval results yet: the pipeline rewrites the card after eval
            if os.path.isfile(os.path.join(tmp, "adapter_config.json")):
                modelcard.adapter_card(tmp, data_dir)
            else:  # a full fine-tune
                modelcard.write_card(tmp, "full", unwrapped.name_or_path,
                                     modelcard.read_text(os.path.join(tmp, "config.yaml")), data_dir)
    outputs.replace(tmp, path, stage)


def embeddings_in_modules_to_save(model) -> bool:
    """A peft model whose input embedding and LM head are both trained in full (modules_to_save)."""
    layers = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    return bool(layers) and all(isinstance(m, ModulesToSaveWrapper) for m in layers)
