"""Every settings dataclass checks its own values: a bad one is one ConfigError line naming
section.field, the value and what is valid, whether it comes from a recipe, an override, a
suite, a constructor call or dataclasses.replace. YAML files: a key written twice and an empty
recipe are one-line errors."""
import dataclasses
import glob
import os

import pytest

from reasonlm.config import (BaseConfig, ChatConfig, ConfigError, CurriculumConfig, DataConfig, EvalConfig, Recipe,
                             RLConfig, TrainConfig, RECIPE_KEYS, is_suite, load_recipe, load_suite)
from tests.helpers import ROOT

SECTIONS = {"data": DataConfig, "base": BaseConfig, "train": TrainConfig, "eval": EvalConfig, "chat": ChatConfig,
            "rl": RLConfig, "rl.curriculum": CurriculumConfig}

# (section, field, bad value, fragment of the message after "section.field must be ")
BAD = [
    # data: counts and sizes
    ("data", "n_train", -1, ">= 0"),
    ("data", "n_validation", -1, ">= 0"),
    ("data", "n_base", -5, ">= 0"),
    ("data", "n_test_per_steps", 0, ">= 1"),
    ("data", "eval_min_steps", 0, ">= 1"),
    ("data", "shard_rows", 0, ">= 1"),
    ("data", "workers", -1, ">= 0"),
    ("data", "ngram_n", -1, ">= 0"),
    # data: step ranges, choices, lists
    ("data", "train_steps", [3, 1], "[lo, hi] with 1 <= lo <= hi"),
    ("data", "base_steps", [0, 1], "[lo, hi] with 1 <= lo <= hi"),
    ("data", "ood_steps", [7], "[lo, hi] with 1 <= lo <= hi"),
    ("data", "on_error", "ignore", "'raise' or 'skip'"),
    ("data", "dedup", "fuzzy", "'none', 'exact' or 'normalized'"),
    ("data", "decontaminate_against", [3], "a list of paths"),
    ("data", "tasks", [], "a non-empty list of sources, each a mapping with a 'name'"),
    ("data", "tasks", [{"weight": 1}], "a non-empty list of sources, each a mapping with a 'name'"),
    # base
    ("base", "steps", 0, ">= 1"),
    ("base", "batch_tokens", 0, ">= 1"),
    ("base", "batch_tokens", 100, ">= base.seq_len (192)"),  # fewer tokens than one row
    ("base", "seq_len", 0, ">= 1"),
    ("base", "num_heads", 0, ">= 1"),
    ("base", "hidden_size", -128, ">= 1"),
    ("base", "vocab_size", 0, ">= 1"),
    ("base", "warmup_steps", -1, ">= 0"),
    ("base", "lr", -1e-3, ">= 0"),
    ("base", "rope_theta", 0.0, "> 0"),
    ("base", "model", "", "'tiny' or a Hub id or path"),
    # train: counts and sizes
    ("train", "steps", 0, ">= 1"),
    ("train", "steps", -3, ">= 1"),
    ("train", "batch_tokens", 0, ">= 1"),
    ("train", "batch_tokens", 100, ">= train.seq_len (192)"),  # fewer tokens than one row
    ("train", "seq_len", 0, ">= 1"),
    ("train", "lora_r", 0, ">= 1"),
    ("train", "lora_alpha", 0, "> 0"),
    ("train", "grad_accum", 0, ">= 1"),
    ("train", "keep_last", 0, ">= 1"),
    ("train", "warmup_steps", -1, ">= 0"),
    ("train", "eval_every", -1, ">= 0"),
    ("train", "save_every", -1, ">= 0"),
    ("train", "log_every", -1, ">= 0"),
    ("train", "eval_samples", -1, ">= 0"),
    ("train", "early_stop_patience", -1, ">= 0"),
    ("train", "lr", -0.1, ">= 0"),
    ("train", "lr", float("inf"), "finite and >= 0"),
    ("train", "grad_clip", -1.0, ">= 0"),
    ("train", "lora_dropout", 1.0, "in [0, 1)"),
    # train: choices
    ("train", "format", "cott", "'cot' or 'direct'"),
    ("train", "schedule", "constant", "'cosine' or 'linear'"),
    ("train", "resume", "always", "'auto' or 'never'"),
    ("train", "too_long", "truncate", "'drop' or 'error'"),
    ("train", "mixed_precision", "fp8", "'no', 'bf16' or 'fp16'"),
    ("train", "target_modules", "", "'all-linear' or module names"),
    ("train", "modules_to_save", [""], "a list of non-empty strings"),
    # eval (ported from evaluate.validate, plus the counts)
    ("eval", "prompt", "fancy", "'chat' or 'plain'"),
    ("eval", "format", "cott", "'', 'cot' or 'direct'"),
    ("eval", "samples", 0, ">= 1"),
    ("eval", "batch_size", 0, ">= 1"),
    ("eval", "shots", -1, ">= 0"),
    ("eval", "max_problems", -1, ">= 0"),
    ("eval", "max_new_tokens", -1, ">= 0"),
    ("eval", "temperature", -0.5, ">= 0"),
    ("eval", "top_p", 0.0, "in (0, 1]"),
    ("eval", "top_p", 1.5, "in (0, 1]"),
    ("eval", "min_accuracy", 1.5, "in [0, 1]"),
    ("eval", "seeds", [], "a non-empty list of integers"),
    ("eval", "seeds", [0, "a"], "a non-empty list of integers"),
    ("eval", "ks", [2], "a list of k in 1..samples (1)"),
    ("eval", "stop_strings", [""], "a list of non-empty strings"),
    # chat
    ("chat", "temperature", -1.0, ">= 0"),
    ("chat", "top_p", 0.0, "in (0, 1]"),
    ("chat", "max_new_tokens", 0, ">= 1"),
    # rl (issue 30 fault 3: rl.lr=.inf trained NaN weights and exited 0)
    ("rl", "lr", float("inf"), "finite and > 0"),
    ("rl", "lr", float("nan"), "finite and > 0"),
    ("rl", "lr", -1.0, "> 0"),
    ("rl", "lr", 0.0, "> 0"),
    ("rl", "weight_decay", -0.1, ">= 0"),
    ("rl", "grad_clip", -1.0, ">= 0"),
    ("rl", "keep_last", 0, ">= 1"),
    ("rl", "save_every", -1, ">= 0"),
    ("rl", "retries", -1, ">= 0"),
    ("rl", "preflight_problems", 0, ">= 1"),
    ("rl", "max_resamples", -1, ">= 0"),
    ("rl", "truncation_penalty", -0.5, ">= 0"),
    ("rl", "seed", -1, ">= 0"),
    ("rl", "num_generations", 1, ">= 2"),
    ("rl", "temperature", 0.0, "> 0"),
    ("rl", "top_p", 0.0, "in (0, 1]"),
    ("rl", "replay_fraction", 1.0, "in [0, 1)"),
    ("rl", "n_steps", [True, 2], "[lo, hi] with 1 <= lo <= hi"),
    ("rl", "probe_steps", [3, 2], "[lo, hi] with 1 <= lo <= hi"),
    ("rl", "algorithm", "ppo", "'grpo' or 'expert_iteration'"),
    ("rl", "task", {"name": "arithmetic", "args": [1]},
     "{} (the first generated family of data.tasks) or {name: FAMILY, args: {KNOB: VALUE}}"),
    # rl.curriculum (issue 29): start inside [1, max], grow_when in (0, 1]
    ("rl.curriculum", "start", [0, 3], "[lo, hi] inside [1, max] (1 <= lo <= hi <= 24)"),
    ("rl.curriculum", "start", [9, 30], "[lo, hi] inside [1, max] (1 <= lo <= hi <= 24)"),
    ("rl.curriculum", "start", [9, 7], "[lo, hi] inside [1, max] (1 <= lo <= hi <= 24)"),
    ("rl.curriculum", "grow_when", 0.0, "in (0, 1]"),
    ("rl.curriculum", "grow_when", 1.5, "in (0, 1]"),
    ("rl.curriculum", "step", 0, ">= 1"),
    ("rl.curriculum", "max", 0, ">= 1"),
    ("rl.curriculum", "probe_problems", 0, ">= 1"),
    ("rl.curriculum", "replay", 1.0, "in [0, 1)"),
    ("eval", "ladder_steps", [3, 1], "[lo, hi] with 1 <= lo <= hi"),
]


@pytest.mark.parametrize("section,name,value,valid", BAD, ids=[f"{s}.{n}={v!r}" for s, n, v, _ in BAD])
def test_bad_value_is_one_line_naming_field_value_and_range(section, name, value, valid):
    with pytest.raises(ConfigError) as e:
        SECTIONS[section](**{name: value})
    assert str(e.value) == f"{section}.{name} must be {valid}, got {value!r}"
    # the same check after dataclasses.replace (which re-runs __post_init__) and from a recipe override
    with pytest.raises(ConfigError, match=f"^{section}.{name} must be "):
        dataclasses.replace(SECTIONS[section](), **{name: value})
    with pytest.raises(ConfigError, match=f"^{section}.{name} must be "):
        load_recipe(None, [f"{section}.{name}={value!r}" if isinstance(value, str) else f"{section}.{name}={value}"])


def test_a_curriculum_needs_probes_and_is_off_unless_asked_for():
    with pytest.raises(ConfigError, match=r"^rl.curriculum needs rl.probe_every >= 1 \(rounds between probes of the "
                                          r"frontier\), got 0$"):
        load_recipe(None, ["rl.curriculum={start: [9, 12]}"])
    recipe = load_recipe(None, ["rl.curriculum={start: [9, 12], max: 16}", "rl.probe_every=2"])
    assert recipe.rl.curriculum == CurriculumConfig(start=[9, 12], max=16)
    assert RLConfig().curriculum is None and load_recipe(os.path.join(ROOT, "recipes", "tiny-cpu.yaml")).rl.curriculum is None


@pytest.mark.parametrize("kw,match", [
    (dict(train_steps=[1, 6], ood_steps=[6, 8]), r"data.ood_steps must be longer than train_steps"),
    (dict(train_steps=[1, 3], ood_steps=[2, 2]), r"data.ood_steps must be longer than train_steps"),
])
def test_ood_steps_must_be_longer_than_train_steps(kw, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig(**kw)
    assert DataConfig(train_steps=[1, 3], ood_steps=[4, 4]).ood_steps == [4, 4]


@pytest.mark.parametrize("hidden,heads", [(128, 3), (96, 32), (10, 10)])
def test_tiny_model_heads_must_have_an_even_width(hidden, heads):
    with pytest.raises(ConfigError, match=f"hidden_size={hidden} num_heads={heads}"):
        BaseConfig(hidden_size=hidden, num_heads=heads)
    assert BaseConfig(hidden_size=96, num_heads=8).num_heads == 8


def test_compile_and_packed_attention_exclude_each_other():
    with pytest.raises(ConfigError, match="train.compile and train.packed_attention cannot be combined"):
        load_recipe(None, ["train.compile=true", "train.packed_attention=true"])
    assert load_recipe(None, ["train.packed_attention=true"]).train.packed_attention


def test_ks_are_checked_against_samples():
    assert EvalConfig(samples=8, ks=[1, 4, 8]).ks == [1, 4, 8]
    with pytest.raises(ConfigError, match=r"eval.ks must be a list of k in 1..samples \(8\), got \[0, 8\]"):
        EvalConfig(samples=8, ks=[0, 8])


@pytest.mark.parametrize("override,match", [
    ("out_dir=", r"^out_dir must be a directory, got ''"),
    ("threads=-1", r"^threads must be >= 0, got -1"),
])
def test_recipe_top_level_values(override, match):
    with pytest.raises(ConfigError, match=match):
        load_recipe(None, [override])


def test_defaults_and_boundaries_are_valid():
    """The defaults, and every boundary value the checks allow, construct."""
    Recipe()
    DataConfig(n_train=0, n_validation=0, n_base=0, ngram_n=0, workers=0, n_test_per_steps=1)
    TrainConfig(steps=1, lr=0.0, warmup_steps=0, eval_every=0, save_every=0, log_every=0, eval_samples=0,
                keep_last=1, grad_clip=0.0, lora_r=1, lora_alpha=1)
    EvalConfig(top_p=1.0, temperature=0.0, max_new_tokens=0, min_accuracy=1.0, format="")
    ChatConfig(temperature=0.0, top_p=1.0, max_new_tokens=1)


def test_a_section_error_in_a_recipe_file_is_one_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("out_dir: x\ndata:\n  n_train: -1\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(str(p))
    assert str(e.value) == "data.n_train must be >= 0, got -1"


# --- YAML files ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,key,lines", [
    ("train:\n  lr: 0.1\n  steps: 3\n  lr: 0.2\n", "lr", "2 and 4"),
    ("out_dir: a\ntrain: {}\nout_dir: b\n", "out_dir", "1 and 3"),
    ("train: {lr: 0.1, lr: 0.2}\n", "lr", "1 and 1"),
    ("data:\n  tasks:\n    - {name: arithmetic, weight: 1, weight: 2}\n", "weight", "3 and 3"),
])
def test_a_key_written_twice_names_the_key_and_both_lines(tmp_path, text, key, lines):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_recipe(str(p))
    assert str(e.value) == f"{p}: key {key!r} is written twice (lines {lines})"


def test_a_key_written_twice_in_a_suite(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("samples: 2\ntemperature: 0.5\nsamples: 4\n")
    with pytest.raises(ConfigError, match=r"s.yaml: key 'samples' is written twice \(lines 1 and 3\)$"):
        load_suite(str(p))


def test_a_merge_key_may_override_the_anchor():
    """`<<: *anchor` then a key of its own is YAML's way to override, not a duplicate."""
    r = load_recipe(None, ["eval.thresholds={<<: {accuracy: 0.5, chain_valid: 0.4}, accuracy: 0.9}"])
    assert r.eval.thresholds == {"accuracy": 0.9, "chain_valid": 0.4}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_an_empty_recipe_is_an_error(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_recipe(str(p))
    assert str(e.value).startswith(f"{p}: the recipe is empty") and "\n" not in str(e.value)


@pytest.mark.parametrize("text,match", [("- a\n- b\n", "a recipe is a mapping of settings, got list"),
                                        ("train: [\n", "not valid YAML"),
                                        (b"out_dir: \xff\xfe\n", "not UTF-8 text")])
def test_unreadable_recipe_is_one_line(tmp_path, text, match):
    p = tmp_path / "r.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=match) as e:
        load_recipe(str(p))
    assert "\n" not in str(e.value)


def test_an_override_that_is_not_yaml_is_one_line():
    with pytest.raises(ConfigError, match=r"override 'train.lr=\[1,': not valid YAML"):
        load_recipe(None, ["train.lr=[1,"])


# --- suites ----------------------------------------------------------------------------------------
def test_recipe_keys_are_the_keys_only_a_recipe_has():
    assert RECIPE_KEYS == {"out_dir", "threads", "direct_baseline", "device", "base", "train", "rl", "eval", "chat"}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "eval", "*.yaml"))))
def test_every_shipped_suite_loads(path):
    assert is_suite(path)
    cfg = load_suite(path)
    assert isinstance(cfg, EvalConfig) and cfg.name


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "data", "*.yaml"))
                                        + glob.glob(os.path.join(ROOT, "recipes", "*.yaml"))))
def test_shipped_recipes_are_not_suites(path):
    assert not is_suite(path)
    assert isinstance(load_recipe(path), Recipe)


def test_suite_name_defaults_to_the_file_name_and_overrides_apply(tmp_path):
    p = tmp_path / "my-suite.yaml"
    p.write_text("samples: 4\ntemperature: 0.7\n")
    cfg = load_suite(str(p), ["eval.samples=8", "ks=[1, 8]"])
    assert (cfg.name, cfg.samples, cfg.ks, cfg.temperature) == ("my-suite", 8, [1, 8], 0.7)


@pytest.mark.parametrize("text,overrides,match", [
    ("samples: 0\n", [], r"s.yaml: eval.samples must be >= 1, got 0$"),
    ("samples: 2\n", ["top_p=2"], r"s.yaml: eval.top_p must be in \(0, 1\], got 2.0$"),
    ("sampels: 2\n", [], r"s.yaml: unknown key 'sampels'"),
    ("samples: 2\n", ["samples"], r"override 'samples' is not key=value"),
    ("[1, 2]\n", [], r"s.yaml: a suite is a mapping of settings, got list"),
])
def test_bad_suite_is_one_line_with_the_path(tmp_path, text, overrides, match):
    p = tmp_path / "s.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        load_suite(str(p), overrides)
    assert "\n" not in str(e.value)


def test_missing_suite():
    with pytest.raises(ConfigError, match="suite not found: /nonexistent.yaml"):
        load_suite("/nonexistent.yaml")
