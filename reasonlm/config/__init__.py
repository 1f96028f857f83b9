"""Settings: one flat dataclass per stage, loaded strictly from a recipe YAML.

A recipe has one section per stage (`data`, `base`, `train`, `rl`, `eval`, `chat`; `rl` is
optional: without it there is no RL stage) plus a few top-level keys. Every field has a docstring right under it: that is the documentation.
Unknown keys are an error that names the key and lists the valid ones, and every dataclass
checks its own values in `__post_init__`, right under its fields (also after
`dataclasses.replace`): a bad value is one ConfigError naming section.field, the value and the
valid range. Command-line overrides use dotted paths: `train.lr=1e-3 out_dir=/tmp/run`.
An eval suite is the flat `eval` section in a file of its own (`load_suite`).

The settings are in config/sections.py, their value checks in config/checks.py, the run layout
(RunPaths) in config/paths.py, reading and writing YAML in config/loader.py, a stage's settings hash
(config_hash) in config/hashing.py; import them from here.
"""
from reasonlm.config.checks import (CHECKED_METHODS, DEDUP_MODES, DEVICE, ON_FAIL, SEARCH_METHODS, TRACKERS,
                                     ConfigError)
from reasonlm.config.hashing import OUTPUT_NEUTRAL, config_hash
from reasonlm.config.loader import (RECIPE_KEYS, is_suite, load_recipe, load_suite, render_recipe, resolved_yaml,
                                    save_resolved)
from reasonlm.config.paths import DIRECT_RUN, EVAL_OF_RUN, RunPaths, base_model
from reasonlm.config.sections import (BaseConfig, ChatConfig, CurriculumConfig, DataConfig, EvalConfig, Recipe,
                                      RLConfig, SearchConfig, ServeConfig, TrainConfig, field_docs)

__all__ = ["CHECKED_METHODS", "DEDUP_MODES", "DEVICE", "ON_FAIL", "SEARCH_METHODS", "TRACKERS", "ConfigError",
           "OUTPUT_NEUTRAL", "config_hash",
           "RECIPE_KEYS", "is_suite", "load_recipe", "load_suite", "render_recipe", "resolved_yaml", "save_resolved",
           "DIRECT_RUN", "EVAL_OF_RUN", "RunPaths", "base_model", "BaseConfig", "ChatConfig", "CurriculumConfig", "DataConfig",
           "EvalConfig", "Recipe", "RLConfig", "SearchConfig", "ServeConfig", "TrainConfig", "field_docs"]
