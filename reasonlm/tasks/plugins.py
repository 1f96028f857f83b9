"""Task families from outside the package: a user's Python file, or an installed package's entry point.

    task_files: [my_tasks.py]                 (a recipe or a suite; relative to that file)
    [project.entry-points."reasonlm.tasks"]   (an installed package's pyproject.toml)
    clock = "my_package.clock:Clock"

A task file is imported by its path (importlib's spec_from_file_location) and every class it
defines that subclasses `Family` or `Importer` (reasonlm/tasks/base.py) is a family; an entry point
names one such class. Loading a file runs its code, as pytest runs a conftest.py: only the files a
recipe, a suite or the command line names are loaded, and each is printed with its path.

This module reads and checks classes; reasonlm/tasks/__init__.py registers them in the one registry
(TASKS), so every stage finds a plugin family by name exactly as it finds a built-in one.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import os
import random
import sys

from reasonlm.example import Example
from reasonlm.tasks.base import Family, Importer

ENTRY_POINT_GROUP = "reasonlm.tasks"


class PluginError(ValueError):
    """A task file or entry point that cannot be used, as one line naming it."""


def import_task_file(path: str):
    """The module at `path`, imported under a name of its own (two files called tasks.py do not
    collide); whatever it raises while importing is one PluginError naming the file."""
    path = os.path.realpath(path)
    if not os.path.isfile(path):
        raise PluginError(f"task file not found: {path}")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"reasonlm_task_file_{stem}_{hashlib.sha256(path.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"task file {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any error is theirs to see, as one line
        del sys.modules[name]
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        raise PluginError(f"task file {path} failed to import: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}{where}") from None
    return module


def families_in(module, path: str) -> list[type]:
    """The task classes a task file defines (imported ones, such as Family itself, are not its own),
    each checked against the protocol."""
    found = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
             if cls.__module__ == module.__name__ and kind_of(cls) is not None]
    if not found:
        raise PluginError(f"task file {path} defines no task family (a class subclassing Family or Importer "
                          "from reasonlm.tasks.base)")
    for cls in found:
        check_protocol(cls, f"task file {path}")
    return found


def kind_of(cls) -> type | None:
    """Family or Importer, the protocol class a task class subclasses, else None (they are
    Protocols, so issubclass cannot be asked; the class's MRO says)."""
    mro = getattr(cls, "__mro__", ()) if isinstance(cls, type) else ()
    return next((kind for kind in (Importer, Family) if kind in mro[1:]), None)


def check_protocol(cls, where: str) -> None:
    """One PluginError naming `where`, the class and everything it lacks, or nothing."""
    kind = kind_of(cls)
    if kind is None:
        raise PluginError(f"{where}: {cls!r} is not a task class (subclass Family or Importer from reasonlm.tasks.base)")
    missing = [f"class attribute {attr} ({typ.__name__})" for attr, typ in
               [("name", str), ("license", str)] + ([("version", int)] if kind is Family else [])
               if not isinstance(getattr(cls, attr, None), typ) or getattr(cls, attr) in ("",)]
    methods = ("generate", "check") if kind is Family else ("load", "check")
    missing += [f"method {m}()" for m in methods if getattr(cls, m, None) is getattr(kind, m)]
    try:
        needs = [p.name for p in inspect.signature(cls).parameters.values()
                 if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):
        needs = []
    if needs:  # eval, chat and RL judge a problem with the family built from its name alone
        missing.append(f"defaults for the constructor's knobs {', '.join(needs)}")
    if missing:
        raise PluginError(f"{where}: class {cls.__name__} breaks the task protocol (reasonlm/tasks/base.py): "
                          f"missing {'; '.join(missing)}")


def entry_point_families() -> list[tuple[type, str]]:
    """(class, where it came from) for every entry point of the `reasonlm.tasks` group installed."""
    out = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an installed package"
        where = f"entry point {ep.name} = {ep.value} ({dist})"
        try:
            cls = ep.load()
        except Exception as e:  # the package's code: one line naming the entry point
            raise PluginError(f"{where} failed to load: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                              ) from None
        check_protocol(cls, where)
        out.append((cls, where))
    return out


def capabilities(cls) -> dict:
    """What a family supports, for `reasonlm tasks`: makes problems by generate or load; judges
    steps without a gold solution (what it declares, task.gold_free, for a typical problem: what
    chat's /verify, `reasonlm serve`, search and RL rely on); reads a typed question (parse_question)."""
    importer = kind_of(cls) is Importer
    return {"makes": "load" if importer else "generate", "steps_without_gold": _gold_free_steps(cls),
            "parses_questions": not importer and getattr(cls, "parse_question", None) is not Family.parse_question}


def _gold_free_steps(cls) -> bool:
    """Whether the family's gold_free (GOLD_FREE) says its checker judges steps ('steps' or
    'calculator', not 'answer') for a typical problem: a generated one of 2 steps, or for an
    importer an answer-only record (what any importer may hold)."""
    try:
        task = cls()
        example = Example("What is 2+3?", "5", (), 1, task.name) if kind_of(cls) is Importer else _first_problem(task)
        return task.gold_free(example) != "answer"
    except Exception:  # a family that cannot make or judge such a problem: not supported
        return False


def _first_problem(task) -> Example:
    """A problem of 2 steps, or of 1 from a family of single steps."""
    try:
        return task.generate(random.Random(0), 2)
    except ValueError:
        return task.generate(random.Random(0), 1)
