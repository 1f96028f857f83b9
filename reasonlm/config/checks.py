"""ConfigError and the value checks every settings dataclass runs in its __post_init__: one
line naming section.field, the value and the valid range."""
from __future__ import annotations

import math
import re


class ConfigError(ValueError):
    """A recipe problem, reported to the user as one line."""


TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow")
DEVICE = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")  # what `device` accepts
DEDUP_MODES = ("none", "exact", "normalized")
SEARCH_METHODS = ("greedy", "majority", "best_of_n", "step_retry", "step_beam")
CHECKED_METHODS = ("best_of_n", "step_retry", "step_beam")  # need a checker that works without the gold
ON_FAIL = ("continue", "stop")
PROPOSE = ("sample", "branch")


# --- value checks (used by the dataclasses' __post_init__) ------------------------------------
def _choices(options) -> str:
    quoted = [repr(o) for o in options]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _check(cfg, section: str, ok, valid: str, *names: str) -> None:
    """Every named field of `cfg` passes `ok`, else one line: section.field, the value, what is valid."""
    for name in names:
        value = getattr(cfg, name)
        if not ok(value):
            if isinstance(value, float) and not math.isfinite(value):  # `.inf` passes `>= 0` on its face
                valid = f"finite and {valid}"
            raise ConfigError(f"{section + '.' if section else ''}{name} must be {valid}, got {value!r}")


def _is_number(v) -> bool:
    """An int or a finite float (never a bool, a NaN or an infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _at_least(cfg, section: str, lo, *names: str) -> None:
    _check(cfg, section, lambda v: _is_number(v) and v >= lo, f">= {lo}", *names)


def _above(cfg, section: str, lo, *names: str) -> None:
    _check(cfg, section, lambda v: _is_number(v) and v > lo, f"> {lo}", *names)


def _one_of(cfg, section: str, name: str, options) -> None:
    _check(cfg, section, lambda v: v in options, _choices(options), name)


def _steps_range(cfg, section: str, *names: str) -> None:
    ok = lambda v: (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                    and 1 <= v[0] <= v[1])
    _check(cfg, section, ok, "[lo, hi] with 1 <= lo <= hi", *names)


def _batch_holds_a_row(cfg, section: str) -> None:
    # a step is batch_tokens // seq_len packed rows: fewer tokens than one row would be rounded
    # up to a whole row, silently training on a bigger batch than the recipe says
    _check(cfg, section, lambda v: v >= cfg.seq_len, f">= {section}.seq_len ({cfg.seq_len})", "batch_tokens")


def _strings(cfg, section: str, *names: str) -> None:
    _check(cfg, section, lambda v: isinstance(v, list) and all(isinstance(x, str) and x for x in v),
           "a list of non-empty strings", *names)
