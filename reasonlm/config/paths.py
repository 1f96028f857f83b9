"""Where every stage of a run reads and writes (RunPaths) and which base model a stage loads."""
from __future__ import annotations

import os
from dataclasses import dataclass

from reasonlm.config.sections import Recipe


DIRECT_RUN = "train-direct"  # the direct-answer ablation's training run (pipeline, `reasonlm train train.format=direct`)
# The eval folder of each training run's held-out report (the pipeline's layout).
EVAL_OF_RUN = {"train": "eval", DIRECT_RUN: "eval-direct", "rl": "eval-rl"}


@dataclass(frozen=True)
class RunPaths:
    """Where every stage of a run reads and writes, under the recipe's out_dir (the one place
    that knows the layout)."""
    out_dir: str

    def _join(self, *parts: str) -> str:
        return os.path.join(self.out_dir, *parts)

    @property
    def data(self) -> str:
        """The dataset the data stage writes."""
        return self._join("data")

    @property
    def base(self) -> str:
        """The base model (and tokenizer) the base stage writes."""
        return self._join("base")

    @property
    def base_run(self) -> str:
        """The base stage's training run (checkpoints, metrics)."""
        return self._join("base-run")

    @property
    def stages(self) -> str:
        """The pipeline's record of its stages (stages.json)."""
        return self._join("stages.json")

    def train_run(self, name: str = "train") -> str:
        """A training run's directory ('train', DIRECT_RUN, 'rl')."""
        return self._join(name)

    def adapter(self, name: str = "train") -> str:
        """The adapter a training run writes."""
        return self._join(name, "adapter")

    def weights(self, name: str = "train", full_finetune: bool = False) -> str:
        """The final weights a training run writes: its adapter, or (a full fine-tune) model/."""
        return self._join(name, "model") if full_finetune else self.adapter(name)

    def eval(self, name: str = "eval") -> str:
        """An eval run's output folder ('eval', 'eval-direct', 'eval-<suite>')."""
        return self._join(name)

    def eval_of(self, run: str) -> str | None:
        """The eval folder holding the held-out report of training run `run` (EVAL_OF_RUN), or None."""
        folder = EVAL_OF_RUN.get(run)
        return self.eval(folder) if folder else None

    def report(self, name: str = "eval") -> str:
        """An eval run's report.json."""
        return os.path.join(self.eval(name), "report.json")


def base_model(recipe: Recipe, model: str = "") -> str:
    """The base model a stage loads: `model` (the stage's own setting: train.model, rl.model,
    eval.model) when set, else base.model when it names a pretrained model (a Hub id or a path),
    else the tiny base the base stage writes (<out_dir>/base)."""
    if model:
        return model
    return recipe.base.model if recipe.base.model != "tiny" else RunPaths(recipe.out_dir).base
