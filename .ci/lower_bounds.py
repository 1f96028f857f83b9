"""Print `name==X` for every `name>=X` (and every `name==X` pin) of the project's dependencies and
its dev extra, one a line: the oldest versions pyproject.toml allows, which .ci/run installs (with
`pip install -e .`, not `.[dev]`, so that nothing newer comes in through the extra) to test the
lower end of each range.

torch is left out: the install command pins it (the CPU wheel). A dependency without a lower
bound is an error, since a range that was never tested at its bottom is not a range we promise.
A dev package in NOT_AT_THE_FLOORS is left out too, with the reason printed to stderr: its own
requirements exclude the project's floors (no environment holds both), or only slow tests use it
and installing it costs minutes; the lower-bound job runs the fast tests (plus .ci/run's one slow run).
"""
import re
import sys
import tomllib
from pathlib import Path

NOT_AT_THE_FLOORS = {
    "trl": "every trl 1.x requires datasets>=4.7, above the project's datasets floor (3.0); only the "
           "benchmarks and tests/test_docs.py's slow TRL test use it",
    "llama-cpp-python": "it builds llama.cpp from source (minutes); only tests/test_gguf.py's slow tests use it",
    "lm-eval": "about 40 packages (scipy, scikit-learn, ...); only tests/test_serve.py's slow client test uses it",
    "selenium": "only tests/test_serve.py's slow browser test uses it",
}

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
for requirement in requirements:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    if name == "torch":
        continue
    if name in NOT_AT_THE_FLOORS:
        print(f"lower bounds: {name} left out: {NOT_AT_THE_FLOORS[name]}", file=sys.stderr)
        continue
    lower = re.search(r"(?:>=|==)\s*([^,;\s]+)", requirement)
    if not lower:
        sys.exit(f"pyproject.toml: {requirement!r} has no lower bound (>= or ==)")
    print(f"{name}=={lower.group(1)}")
