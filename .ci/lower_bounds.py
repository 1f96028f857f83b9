"""Print `name==X` for every `name>=X` of the project's dependencies and its dev extra, one a line:
the oldest versions pyproject.toml allows, which .ci/run installs to test the lower end of each range.

torch is left out: the install command pins it (the CPU wheel). A dependency without a lower
bound is an error, since a range that was never tested at its bottom is not a range we promise.
"""
import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
for requirement in requirements:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    if name == "torch":
        continue
    lower = re.search(r">=\s*([^,;\s]+)", requirement)
    if not lower:
        sys.exit(f"pyproject.toml: {requirement!r} has no lower bound (>=)")
    print(f"{name}=={lower.group(1)}")
