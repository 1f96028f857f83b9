"""data/generate.py: mixing by weight and step range, curriculum order, de-duplication of generated
problems, and the error of a recipe whose space is too small."""
from collections import Counter

import pytest

from reasonlm import data
from tests.data_helpers import TINY, build, jsonl


def test_mixing_weights_and_step_ranges(tmp_path):
    path = build(tmp_path, n_train=4000, train_steps=[1, 6], tasks=[
        {"name": "arithmetic", "weight": 3, "args": TINY},
        {"name": "object_swaps", "weight": 1, "steps": [1, 3]}])
    rows = jsonl(path / "jsonl/train.jsonl")
    swaps = [r for r in rows if r["family"] == "object_swaps"]
    # steps 1-3: swaps get 1/4 of the problems; steps 4-6: none (outside their range)
    assert {r["n_steps"] for r in swaps} == {1, 2, 3}
    assert abs(len(swaps) / 2000 - 0.25) < 0.04
    assert Counter(r["n_steps"] for r in rows) == {s: 667 if s <= 4 else 666 for s in range(1, 7)}


def test_curriculum_orders_train_by_steps(tmp_path):
    rows = jsonl(build(tmp_path, curriculum=True) / "jsonl/train.jsonl")
    assert [r["n_steps"] for r in rows] == sorted(r["n_steps"] for r in rows)
    assert [r["id"] for r in rows] == [f"train-{i:07d}" for i in range(len(rows))]


def test_a_family_must_cover_every_split_steps(tmp_path):
    with pytest.raises(data.DataError, match="needs 7-step problems but no family"):
        build(tmp_path, tasks=[{"name": "arithmetic", "args": TINY, "steps": [1, 6]}])


def test_dedup_of_a_too_small_space_is_a_clear_error(tmp_path):
    # 1-digit single steps with results 0..9: only 110 distinct problems exist
    with pytest.raises(data.DataError, match="no new 1-step arithmetic problem in .* draws"):
        build(tmp_path, n_train=500, dedup="normalized", train_steps=[1, 1], ood_steps=[2, 3], eval_min_steps=1)
