"""Recipes and eval suites read strictly from YAML (unknown keys, wrong types and YAML bombs are
one ConfigError), dotted command-line overrides, and the resolved settings written back: plain
(save_resolved) or with every field's docstring as a comment (render_recipe)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import fields

import yaml

from reasonlm.config.checks import ConfigError
from reasonlm.config.sections import EvalConfig, Recipe, field_docs
from reasonlm.example import ExampleError, text_lines
from reasonlm.outputs import atomic_write


# --- loading ---------------------------------------------------------------------------------
def load_recipe(path: str | None, overrides: list[str] = ()) -> Recipe:
    """The recipe at `path` (None: the defaults) with dotted `key=value` overrides."""
    raw = read_settings(path, "recipe") if path else {}
    empty = path is not None and not sets_anything(raw)  # only empty sections: `train:`, `eval: {}`
    if path:
        resolve_task_files(raw, path)
        resolve_task_files(raw.get("eval"), path)
    for item in overrides:
        key, value = split_override(item, "train.lr=1e-3")
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[leaf] = value
    recipe = from_dict(Recipe, raw, "")  # unknown keys first: `trian: {}` is a typo, not an empty recipe
    recipe.task_files = [os.path.abspath(p) for p in recipe.task_files]  # an override's: from the working directory
    recipe.eval.task_files = [os.path.abspath(p) for p in recipe.eval.task_files]
    if empty:
        raise ConfigError(empty_file(path, "recipe"))
    return recipe


# Keys only a recipe has: a suite's keys are EvalConfig's, and a recipe's `data` is a section
# where a suite's `data` is a dataset path.
RECIPE_KEYS = frozenset(f.name for f in fields(Recipe)) - frozenset(f.name for f in fields(EvalConfig))


def is_suite(path: str) -> bool:
    """A recipe has stage sections (or a data section); a suite is a flat eval section."""
    raw = read_settings(path, "settings file")
    return not (RECIPE_KEYS & set(raw) or isinstance(raw.get("data"), dict))


def load_suite(path: str, overrides=()) -> EvalConfig:
    """A suite YAML (the keys of a recipe's eval section) with `key=value` overrides; the data
    stage (decontamination) and the eval stage both read suites through here."""
    raw = read_settings(path, "suite")
    empty = not sets_anything(raw)
    resolve_task_files(raw, path)
    for item in overrides:
        key, value = split_override(item, "samples=8")
        *parents, leaf = key.removeprefix("eval.").split(".")
        node = raw
        for p in parents:  # search.method=step_retry
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
        node[leaf] = value
    try:
        cfg = from_dict(EvalConfig, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if empty:
        raise ConfigError(empty_file(path, "suite"))
    if not cfg.name:
        cfg = dataclasses.replace(cfg, name=os.path.splitext(os.path.basename(path))[0])
    cfg = dataclasses.replace(cfg, task_files=[os.path.abspath(p) for p in cfg.task_files])
    return cfg


def resolve_task_files(raw, path: str) -> None:
    """A settings file's `task_files` are relative to the file (as a conftest.py is to its folder);
    made absolute in place. Anything but a list of strings is left for validation to name."""
    files = raw.get("task_files") if isinstance(raw, dict) else None
    if isinstance(files, list) and all(isinstance(f, str) and f for f in files):
        raw["task_files"] = [os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(f)) for f in files]


def read_settings(path: str, kind: str) -> dict:
    """A recipe or suite file as a non-empty mapping; every problem is one ConfigError line."""
    if not os.path.isfile(path):
        raise ConfigError(f"{kind} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=StrictLoader)
    except UnicodeDecodeError:
        try:
            for _ in text_lines(path):  # raises naming the first line that is not UTF-8
                pass
        except ExampleError as e:
            raise ConfigError(str(e)) from None
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except ConfigError as e:  # a key written twice
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if raw is None or raw == {}:
        raise ConfigError(empty_file(path, kind))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {kind} is a mapping of settings, got {type(raw).__name__}")
    return raw


def empty_file(path: str, kind: str) -> str:
    return f"{path}: the {kind} is empty (an empty file would silently run on the defaults)"


def sets_anything(node) -> bool:
    """Whether parsed YAML sets a value: a file of empty sections (`train:`, `eval: {}`) does not."""
    if isinstance(node, dict):
        return any(sets_anything(v) for v in node.values())
    return node is not None


def split_override(item: str, example: str) -> tuple[str, object]:
    """'key=value' -> (key, value read as YAML; '' when empty)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value (e.g. {example})")
    key, text = item.split("=", 1)
    try:
        return key, yaml.load(text, Loader=StrictLoader) if text else ""
    except ConfigError as e:
        raise ConfigError(f"override {item!r}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: not valid YAML ({str(e).splitlines()[0]})") from None


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last one
    without a word, so the first setting would be silently ignored), and a document that expands,
    through its aliases, to more than MAX_VALUES values anywhere in it: aliases of aliases (a
    "billion laughs" bomb) parse into a small graph, which copying the settings (dataclasses.asdict,
    the stage hashes, config.yaml) would expand without end."""

    MAX_VALUES = 100_000

    def construct_document(self, node):
        size = expanded_size(node, {})
        if size > self.MAX_VALUES:
            what = "a structure that contains itself" if size == math.inf else f"{size:,} values"
            raise ConfigError(f"the YAML expands through its aliases (*name) to {what}, more than the "
                              f"{self.MAX_VALUES:,} a settings file may hold (a YAML alias bomb?)")
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        first_line: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may override keys: that is its point
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                seen = first_line.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if seen is not None:
                raise ConfigError(f"key {key!r} is written twice (lines {seen} and {line})")
            first_line[key] = line
        return super().construct_mapping(node, deep)


def expanded_size(node, memo: dict) -> float:
    """How many values `node` stands for once every alias is copied out (an alias counts as often
    as it is used; a node that contains itself is infinite). Linear in the parsed graph."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = math.inf  # reached again while counting its children: it contains itself
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(expanded_size(k, memo) + expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


# Keys that were replaced: the unknown-key error says what to write instead.
RENAMED = {"train.tensorboard": "train.report_to: [tensorboard]"}


def from_dict(cls, raw: dict, where: str):
    """Dataclass from a dict, rejecting unknown keys and values of the wrong type; the
    dataclass's __post_init__ then checks the values."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        name = f"{where}.{key}" if where else key
        if key not in known and name in RENAMED:
            raise ConfigError(f"{name!r} was replaced: write {RENAMED[name]} instead")
        if key not in known:
            raise ConfigError(f"unknown key {name!r}; valid keys{' in ' + where if where else ''}: {', '.join(sorted(known))}")
        kind = hints[key]
        if typing.get_origin(kind) is types.UnionType:  # an optional section (`rl: RLConfig | None`)
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
            if value is None:  # `rl: null` (what `reasonlm config` prints for a recipe without one): no section
                kwargs[key] = None
                continue
        if dataclasses.is_dataclass(kind):
            kwargs[key] = from_dict(kind, value or {}, name)
        else:
            kwargs[key] = coerce(value, kind, name)
    return cls(**kwargs)


def coerce(value, kind, name):
    origin = typing.get_origin(kind) or kind
    if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if origin is float and isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if origin is str and isinstance(value, bool):  # YAML 1.1 reads a bare no/yes as a bool
        return "yes" if value else "no"
    if origin is str and isinstance(value, (int, float)):
        return str(value)
    if origin in (bool, int, float, str, list, dict) and not isinstance(value, origin):
        raise ConfigError(f"{name}: expected {origin.__name__}, got {value!r}")
    if origin is int and isinstance(value, bool):
        raise ConfigError(f"{name}: expected int, got {value!r}")
    return value


def save_resolved(cfg, directory: str, name: str = "config.yaml") -> None:
    """Write the resolved settings next to a stage's output (atomically)."""
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, name), resolved_yaml(cfg))


def resolved_yaml(cfg) -> str:
    """The resolved settings as YAML (what save_resolved writes)."""
    return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False)


# --- the resolved recipe, documented ---------------------------------------------------------
def render_recipe(recipe: Recipe) -> str:
    """The recipe as YAML, every field preceded by its docstring as a comment. Valid YAML that
    load_recipe reads back to the same recipe (`reasonlm config RECIPE [key=value ...]`)."""
    lines: list[str] = []
    _render_section(recipe, 0, lines)
    return "\n".join(lines) + "\n"


def _render_section(cfg, indent: int, lines: list[str]) -> None:
    docs, pad = field_docs(type(cfg)), " " * indent
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines += ["", f"{pad}{f.name}:"]
            _render_section(value, indent + 2, lines)
            continue
        lines += [f"{pad}# {line}".rstrip() for line in docs.get(f.name, "").splitlines()]
        # one field at a time through safe_dump, so quoting ('no', '1e-3', '') is YAML's own; lists
        # and mappings of plain values stay on one line ([1, 6])
        flow = None if isinstance(value, (list, dict)) else False
        text = yaml.safe_dump({f.name: value}, sort_keys=False, default_flow_style=flow, width=100, allow_unicode=True)
        lines += [pad + line for line in text.rstrip("\n").splitlines()]
