"""A stage's settings hash: what the pipeline skips a finished stage by (stages.json), what a
checkpoint records it was made from (checkpoint.made_from) and the data stage's dataset identity.
Plain Python (no torch), so the data stage and its spawned workers import it for free."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from reasonlm.config.sections import SearchConfig

# Settings that change how a stage runs or reports, never what it writes: changing one reruns no
# pipeline stage, and a checkpoint made under other values of them is resumed (a resumed run ends
# bitwise where an uninterrupted one does, whatever save_every, keep_last, log_every or
# rl.processes; recipe.threads and recipe.device are not stage settings at all).
OUTPUT_NEUTRAL = frozenset({"report_to", "resume", "log_every", "save_every", "keep_last",  # train
                            "min_accuracy", "metrics", "thresholds", "baseline",  # eval: the gate runs every time
                            "ladder_per_steps", "ladder_steps",  # eval: the ladder's own config holds them in its source
                            "processes",  # rl: N processes sample and train what one does
                            "workers"})  # data: how fast the files are written, never a byte of them


def config_hash(cfg, out_dir: str = "") -> str:
    """sha256 of a stage's resolved settings (less OUTPUT_NEUTRAL ones) as canonical JSON. Paths
    inside out_dir (the tiny base, the data a ladder excludes) count relative to it: what is there
    is another stage's output, hashed as that stage, so a run directory moved or copied elsewhere
    is still up to date."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in OUTPUT_NEUTRAL}
    if settings.get("search") == dataclasses.asdict(SearchConfig()):  # greedy, as before eval.search existed:
        del settings["search"]  # a finished eval stage stays finished
    if "curriculum" in settings and settings["curriculum"] is None:  # rl without one, as before rl.curriculum existed
        del settings["curriculum"]
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    if out_dir:
        inside = json.dumps(os.path.join(out_dir, ""))[1:-1]  # as it is written inside a JSON string
        text = text.replace('"' + inside, '"<out_dir>/')
    return hashlib.sha256(text.encode()).hexdigest()
