"""Shared pieces of the eval tests: the toy model's folder (the model: conftest.py's `toy`), toy suites, fake samples and reports."""
import json
import os

import pytest
import yaml

from reasonlm.evaluate.metrics import summarize
from reasonlm.example import Example
from tests.helpers import TINY_TASK, rows


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory, toy):
    path = str(tmp_path_factory.mktemp("toy"))
    model, tok = toy
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_suite(path, **settings_):
    base = {"name": "toy", "sources": [{"task": "arithmetic", "args": TINY_TASK, "steps": [1, 3], "n_per_steps": 4,
                                        "name": "arith"}], "max_new_tokens": 12, "batch_size": 4}
    base.update(settings_)
    path.write_text("# reasonlm eval toy.yaml --model TOY\n" + yaml.safe_dump(base))
    return str(path)


def examples(n, steps=(1, 4), seed=0):
    return [Example.from_row(r) for r in rows(n, steps, seed)]


def read_samples(d):
    with open(os.path.join(d, "samples.jsonl")) as f:
        return [json.loads(l) for l in f]


def sample(pid, correct, n_steps=2, family="arithmetic", split="s", answer=None, gold="4", first_bad=None, k=0,
           extraction_failed=False, chain_valid=None, steps=(2, 2)):
    chain_valid = correct and first_bad is None if chain_valid is None else chain_valid
    return {"split": split, "id": pid, "sample": k, "n_steps": n_steps, "family": family, "gold": gold,
            "correct": correct, "flexible_correct": correct, "extraction_failed": extraction_failed,
            "answer": answer if answer is not None else (gold if correct else None if extraction_failed else "0"),
            "chain_valid": chain_valid, "right_answer_wrong_chain": correct and not chain_valid,
            "first_bad_step": first_bad, "steps_ok": steps[0], "steps_total": steps[1]}


def fake_report(tmp_path, name, outcomes, fingerprint="f" * 16, split="test"):
    """A report.json whose per-problem outcomes are `outcomes` (one 0/1 per problem)."""
    samples = [sample(f"p{i}", bool(c), split=split) for i, c in enumerate(outcomes)]
    summary = summarize(samples)
    report = {"suite": "t", "splits": {split: summary}, "overall": summary, "dataset_fingerprint": fingerprint,
              "accuracy": summary["accuracy"], "samples_path": "samples.jsonl",
              "per_problem": {f"{split}/p{i}": [int(c)] for i, c in enumerate(outcomes)}}
    d = tmp_path / name
    d.mkdir()
    (d / "report.json").write_text(json.dumps(report))
    (d / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return str(d / "report.json"), report

