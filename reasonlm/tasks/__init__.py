"""Task families. One file per family; each holds its generator (or importer), gold steps,
checker and, for generated families, the parser chat's /verify uses.

A task is a small object (nanochat style) that every stage reuses; the protocol it follows is
written out in tasks/base.py:
  - the data stage calls `generate(rng, n_steps)` (generated families) or `load()` (importers),
  - the verdict (reasonlm/verdict.py: eval, RL, chat) calls `check(example, steps, answer)` on model output.

Problems are `reasonlm.example.Example`s; `meta` holds whatever the checker needs beyond the
question. Adding a family touches its own file plus one line in `TASKS` below; a family in a
file of your own (a recipe's `task_files`) or an installed package (entry point group
`reasonlm.tasks`) registers here through `load_plugins` (tasks/plugins.py reads and checks it).
"""
from __future__ import annotations

from reasonlm.example import Example
import os
import sys

from reasonlm.tasks import arithmetic, gsm8k, linear_equations, object_swaps, reasoning_gym, records, word_problems
from reasonlm.tasks.base import Check, Family, Importer, Task, is_importer
from reasonlm.tasks.plugins import PluginError, capabilities, entry_point_families, families_in, import_task_file

# In the order /verify tries the generated families on a question: word_problems reads almost any
# question with a number in it, so it comes after every family with a stricter question format.
TASKS: dict[str, type] = {
    "arithmetic": arithmetic.ArithmeticChain,
    "arithmetic_step": arithmetic.ArithmeticStep,  # one step of a long expression (base corpus)
    "linear_equations": linear_equations.LinearEquations,
    "object_swaps": object_swaps.ObjectSwaps,
    "word_problems": word_problems.WordProblems,
    "gsm8k": gsm8k.GSM8K,  # importer
    "reasoning_gym": reasoning_gym.ReasoningGym,  # importer, optional extra reasonlm[gym]
    "records": records.Records,  # importer: your own JSONL/CSV/parquet file or Hub dataset, by column
}


BUILT_IN = "built-in"
ORIGINS: dict[str, str] = dict.fromkeys(TASKS, BUILT_IN)  # family -> where it came from
_FILES: list[str] = []  # task files loaded in this process, in order (data's worker processes load them too)
_INSTALLED: list[bool] = []  # [True] once the installed entry points are registered


def register(cls: type, origin: str) -> None:
    """Add a checked plugin class to TASKS under its name, before word_problems (which reads almost
    any question, so /verify tries it last); a name already taken by another class is an error."""
    taken = TASKS.get(cls.name)
    if taken is cls:
        return
    if taken is not None:
        raise PluginError(f"{origin}: class {cls.__name__}: family name {cls.name!r} is taken ({ORIGINS[cls.name]})")
    entries = list(TASKS.items())
    at = next((i for i, (name, _) in enumerate(entries) if name == "word_problems"), len(entries))
    TASKS.clear()
    TASKS.update(entries[:at] + [(cls.name, cls)] + entries[at:])
    ORIGINS[cls.name] = origin


def load_plugins(task_files=(), quiet: bool = False) -> list[str]:
    """Register the families of these task files (paths; each loaded once per process) and of the
    installed entry points; prints every file loaded with its path and families unless quiet.
    Returns the names of the families registered from the files."""
    load_installed(quiet)
    names = []
    for path in task_files:
        path = os.path.realpath(path)
        classes = [cls for cls, origin in ((c, ORIGINS.get(c.name)) for c in TASKS.values()) if origin == path]
        if path not in _FILES:
            classes = families_in(import_task_file(path), path)
            for cls in classes:
                register(cls, path)
            _FILES.append(path)
            if not quiet:
                print(f"tasks: loaded {path} ({', '.join(c.name for c in classes)})", file=sys.stderr)
        names += [c.name for c in classes]
    return names


def load_installed(quiet: bool = False) -> None:
    """Register every family of the `reasonlm.tasks` entry point group, once per process."""
    if _INSTALLED:
        return
    _INSTALLED.append(True)
    for cls, origin in entry_point_families():
        register(cls, origin)
        if not quiet:
            print(f"tasks: loaded {cls.name} from {origin}", file=sys.stderr)


def loaded_task_files() -> list[str]:
    """The task files this process loaded (a spawned worker loads the same ones)."""
    return list(_FILES)


def describe() -> list[dict]:
    """Every family with where it came from and what it supports (`reasonlm tasks`)."""
    load_installed()
    return [{"name": name, "origin": ORIGINS.get(name, "registered in code"), **capabilities(cls)}
            for name, cls in TASKS.items()]


def get_task(family: str, /, **knobs) -> Task:
    """The task object for a family name, configured with its knobs. `family` is positional-only,
    so a family may have a knob called `family` or `name` (reasoning_gym's):
    get_task("reasoning_gym", name="chain_sum")."""
    load_installed()
    if family not in TASKS:
        raise ValueError(f"unknown task family {family!r}; known: {', '.join(known_tasks())}")
    try:
        return TASKS[family](**knobs)
    except TypeError as e:
        raise ValueError(f"bad settings for task {family!r}: {e}") from None


def known_tasks() -> list[str]:
    load_installed()
    return sorted(TASKS)


def question_families() -> list[str]:
    """The generated families, in the order `parse_any_question` tries them."""
    load_installed()
    return [name for name, cls in TASKS.items() if not cls.imported]


def parse_any_question(question: str) -> tuple[Family, Example] | None:
    """(task, checkable example) from the first generated family that reads the question, else None.
    The tasks have default knobs: a checker takes what it needs from the example."""
    for family in question_families():
        task = TASKS[family]()
        example = task.parse_question(question)
        if example is not None:
            return task, example
    return None


__all__ = ["TASKS", "Check", "Family", "Importer", "Task", "is_importer", "get_task", "known_tasks",
           "question_families", "parse_any_question", "PluginError", "load_plugins", "load_installed",
           "loaded_task_files", "describe", "register", "BUILT_IN", "ORIGINS"]
