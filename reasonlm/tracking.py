"""Experiment trackers (train.report_to) through Accelerate: one setup for every training loop
and for eval.

    accelerator = tracked_accelerator(cfg.report_to, run_dir, cpu=...)   # instead of Accelerator(...)
    start_tracking(accelerator, run_dir, cfg)        # one run per stage run, its config as hyperparameters
    accelerator.log(record, step=step)               # the loop logs what it writes to metrics.jsonl
    finish_tracking(accelerator)

Every tracker gets the project "reasonlm" and the run "<out_dir name>/<run name>" (e.g.
"tiny-cpu/train"); TensorBoard writes under <run_dir>/tb, so `tensorboard --logdir out/tiny-cpu`
shows base-run, train, train-direct and eval side by side. wandb, trackio and mlflow log wherever
their own settings say (WANDB_MODE=offline, MLFLOW_TRACKING_URI, ...). metrics.jsonl is written
whatever report_to says: the trackers are a view, not the record.
"""
from __future__ import annotations

import dataclasses
import json
import os

from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import (ProjectConfiguration, is_mlflow_available, is_tensorboard_available,
                              is_trackio_available, is_wandb_available)

PROJECT = "reasonlm"

# Accelerate skips a tracker whose package is missing with a debug message only; we check first.
_INSTALLED = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available,
              "trackio": is_trackio_available, "mlflow": is_mlflow_available}


class TrackingError(ValueError):
    """A tracker that cannot be used, reported as one line."""


def check_installed(report_to) -> None:
    """One line naming the first tracker whose package is missing (the names themselves are
    checked by TrainConfig against config.TRACKERS)."""
    for name in report_to:
        if not _INSTALLED[name]():
            raise TrackingError(f"train.report_to: {name} is not installed (pip install {name})")


def tracked_accelerator(report_to, run_dir: str, **kwargs) -> Accelerator:
    """Accelerator(**kwargs) that logs to the trackers in `report_to` (none: only metrics.jsonl),
    with the mixed precision this stage asks for, as in a process of its own.

    Accelerate keeps one AcceleratorState per process and refuses a second Accelerator with
    another mixed precision ("AcceleratorState has already been initialized"), while `reasonlm
    pipeline` runs its stages in one process (base in fp32, then train in bf16). So every stage's
    Accelerator starts from a cleared AcceleratorState (the mixed precision comes from the stage,
    else from `accelerate launch`'s environment, as in a fresh process); the PartialState (the
    device and the process group), which the stages share, is kept. Accelerate has no public
    reset; `_reset_state` is what its own tests and transformers' TrainingArguments call."""
    check_installed(report_to)
    AcceleratorState._reset_state()
    if not report_to:
        return Accelerator(**kwargs)
    return Accelerator(log_with=list(report_to), **kwargs,
                       project_config=ProjectConfiguration(project_dir=run_dir, logging_dir=os.path.join(run_dir, "tb")))


def start_tracking(accelerator: Accelerator, run_dir: str, config) -> None:
    """Open one tracker run for this stage run, with `config` (a settings dataclass) as its
    hyperparameters. Does nothing without trackers."""
    if not accelerator.log_with:
        return
    run_name = "/".join(os.path.normpath(os.path.abspath(run_dir)).split(os.sep)[-2:])
    accelerator.init_trackers(PROJECT, config=hyperparameters(config),
                              init_kwargs={"wandb": {"name": run_name}, "trackio": {"name": run_name},
                                           "mlflow": {"run_name": run_name}})


def finish_tracking(accelerator: Accelerator) -> None:
    """Close every tracker run. Not accelerator.end_training(): that also destroys the process
    group, and the pipeline runs several stages (each with its own Accelerator) in one group."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def hyperparameters(config) -> dict:
    """A settings dataclass as flat {name: bool | int | float | str}: what every tracker accepts
    as hyperparameters (TensorBoard's hparams refuse lists and mappings, so those become JSON)."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out
