"""Suites: a flat YAML of eval settings (a recipe's eval section), told apart from recipes.

Settings are checked here (`validate`) before anything is loaded.
"""
from __future__ import annotations

import os
import sys

import yaml

from reasonlm.config import ConfigError, EvalConfig, build
from reasonlm.evaluate.errors import EvalError

RECIPE_KEYS = {"out_dir", "threads", "direct_baseline", "base", "train", "eval", "chat"}


def _read_yaml(path: str):
    if not os.path.isfile(path):
        raise EvalError(f"not found: {path}")
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise EvalError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def is_suite(path: str) -> bool:
    """A recipe has stage sections (or a data section); a suite is a flat eval section."""
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise EvalError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    return not (RECIPE_KEYS & set(raw) or isinstance(raw.get("data"), dict))


def load_suite(path: str, overrides=()) -> EvalConfig:
    """A suite YAML (the keys of a recipe's eval section) with `key=value` overrides."""
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise EvalError(f"{path}: a suite is a mapping of eval settings, got {type(raw).__name__}")
    for item in overrides:
        if "=" not in item:
            raise EvalError(f"override {item!r} is not key=value (e.g. samples=8)")
        key, value = item.split("=", 1)
        raw[key.removeprefix("eval.")] = yaml.safe_load(value) if value else ""
    try:
        cfg = build(EvalConfig, raw, "")
    except ConfigError as e:
        raise EvalError(f"{path}: {e}") from None
    if not cfg.name:
        cfg.name = os.path.splitext(os.path.basename(path))[0]
    return cfg


def validate(cfg: EvalConfig) -> None:
    """Settings that would waste a run, as one-line errors before anything is loaded."""
    checks = [(cfg.prompt in ("chat", "plain"), f"prompt must be 'chat' or 'plain', got {cfg.prompt!r}"),
              (cfg.format in ("", "cot", "direct"), f"format must be 'cot' or 'direct', got {cfg.format!r}"),
              (cfg.samples >= 1, f"samples must be >= 1, got {cfg.samples}"),
              (cfg.shots >= 0, f"shots must be >= 0, got {cfg.shots}"),
              (cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}"),
              (cfg.temperature >= 0, f"temperature must be >= 0, got {cfg.temperature}"),
              (0 < cfg.top_p <= 1, f"top_p must be in (0, 1], got {cfg.top_p}"),
              (cfg.budget_scale > 0, f"budget_scale must be > 0, got {cfg.budget_scale}"),
              (bool(cfg.seeds) and all(isinstance(s, int) for s in cfg.seeds), f"seeds must be a list of integers, got {cfg.seeds!r}"),
              (all(isinstance(k, int) and 1 <= k <= cfg.samples for k in cfg.ks),
               f"every k in ks must be in 1..samples ({cfg.samples}), got {cfg.ks}"),
              (all(isinstance(s, str) and s for s in cfg.stop_strings), "stop_strings must be non-empty strings")]
    for ok, message in checks:
        if not ok:
            raise EvalError(message)
    if cfg.samples > 1 and cfg.temperature == 0:
        print("warning: samples > 1 with temperature 0: every sample is the same greedy output", file=sys.stderr)
