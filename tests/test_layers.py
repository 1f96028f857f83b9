"""Imports point one way: cli -> pipeline -> stages -> the shared modules, and never in a circle.

Reads every reasonlm/**/*.py with `ast` (in-function imports included: a lazy import is still a
dependency) and checks (a) no cycle between project modules, (b) no module imports a higher layer.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "reasonlm"

# Low to high. A module may import its own layer or lower ones; stages may call each other's
# public functions (base uses train.fit) as long as no cycle appears.
LAYERS = [
    ["reasonlm", "reasonlm.answer", "reasonlm.outputs", "reasonlm.detokenizer"],
    ["reasonlm.example"],
    ["reasonlm.config"],
    ["reasonlm.stats", "reasonlm.plots", "reasonlm.tracking", "reasonlm.packing"],
    ["reasonlm.engine", "reasonlm.sampling", "reasonlm.hf_decoder", "reasonlm.llama_decoder", "reasonlm.stream",
     "reasonlm.ondevice", "reasonlm.gguf"],
    ["reasonlm.model", "reasonlm.modelcard", "reasonlm.checkpoint", "reasonlm.export"],
    ["reasonlm.tasks", "reasonlm.verdict"],
    ["reasonlm.search", "reasonlm.sources", "reasonlm.credit", "reasonlm.curriculum"],
    ["reasonlm.data", "reasonlm.base", "reasonlm.train", "reasonlm.evaluate", "reasonlm.chat", "reasonlm.rl",
     "reasonlm.serve"],
    ["reasonlm.pipeline"],
    ["reasonlm.cli", "reasonlm.__main__"],
]


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    """The layer of a module: its own entry, else its package's (tasks.arithmetic is in tasks)."""
    for name in (module.rsplit(".", k)[0] for k in range(module.count(".") + 1)):
        for level, names in enumerate(LAYERS):
            if name in names:
                return level
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")


def project_imports(files: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (a `from pkg import sub` names the submodule)."""
    graph = {}
    for module, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "reasonlm"}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "reasonlm":
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    deps.add(sub if sub in files else node.module)
        deps.discard(module)
        graph[module] = {d for d in deps if d in files}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), as a readable path."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
            for m, deps in sorted(graph.items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]


@pytest.fixture(scope="module")
def graph():
    files = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    return project_imports(files)


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between project modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_lower_layer_imports_a_higher_one(graph):
    bad = layer_violations(graph)
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_checks_catch_a_cycle_and_an_upward_import():
    graph = {"reasonlm.train": {"reasonlm.evaluate", "reasonlm.answer"}, "reasonlm.evaluate": {"reasonlm.train"},
             "reasonlm.answer": {"reasonlm.pipeline"}, "reasonlm.pipeline": set()}
    assert find_cycles(graph) == [["reasonlm.evaluate", "reasonlm.train"]]
    assert layer_violations(graph) == ["reasonlm.answer (layer 0) imports reasonlm.pipeline (layer 9)"]


def test_from_package_import_submodule_names_the_submodule(tmp_path):
    pkg = tmp_path / "reasonlm"
    (pkg / "tasks").mkdir(parents=True)
    (pkg / "tasks" / "__init__.py").write_text("")
    (pkg / "tasks" / "arithmetic.py").write_text("")
    (pkg / "chat.py").write_text("def f():\n    from reasonlm.tasks import arithmetic, get_task\n")
    files = {"reasonlm.tasks": pkg / "tasks" / "__init__.py", "reasonlm.tasks.arithmetic": pkg / "tasks" / "arithmetic.py",
             "reasonlm.chat": pkg / "chat.py"}
    assert project_imports(files)["reasonlm.chat"] == {"reasonlm.tasks", "reasonlm.tasks.arithmetic"}
