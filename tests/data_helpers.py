"""What the data-stage tests share: a small recipe, a build, the files' digests, GSM8K-format files."""
import hashlib
import json
from pathlib import Path

import pytest

from reasonlm import data
from reasonlm.config import DataConfig, Recipe
from tests.helpers import ROOT, TINY_TASK as TINY

REPO = Path(ROOT)
FIXTURE = REPO / "data" / "fixtures" / "gsm8k_sample.jsonl"


def cfg(**kw) -> DataConfig:
    base = dict(tasks=[{"name": "arithmetic", "args": TINY}], n_train=600, n_base=200, n_validation=50,
                n_test_per_steps=10, workers=1)
    base.update(kw)
    return DataConfig(**base)


def build(tmp_path, name="run", **kw) -> Path:
    return Path(data.run(Recipe(out_dir=str(tmp_path / name), data=cfg(**kw))))


def jsonl(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f]


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def gsm8k_fixture(tmp_path) -> str:
    if FIXTURE.exists():
        return str(FIXTURE)
    from reasonlm.tasks.gsm8k import write_fixture
    return write_fixture(str(tmp_path / "gsm8k_sample.jsonl"))


def gsm8k_file(path, questions) -> str:
    """A GSM8K-format file with one valid 1-step record per question."""
    with open(path, "w") as f:
        for i, q in enumerate(questions):
            answer = f"It is {i}+1 = <<{i}+1={i + 1}>>{i + 1}.\n#### {i + 1}"
            f.write(json.dumps({"question": q, "answer": answer}) + "\n")
    return str(path)
