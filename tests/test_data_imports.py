"""data/imports.py: importers' records checked, counted, capped, de-duplicated, and sent to train or
an eval split of their own."""
import json

import pytest

from reasonlm import data
from reasonlm.example import question_key, read_dataset
from tests.data_helpers import TINY, build, gsm8k_file, gsm8k_fixture, jsonl


def test_imported_eval_split_is_a_split_and_train_is_clean_of_it(tmp_path, gsm8k_fixture):
    path = build(tmp_path, on_error="skip", tasks=[
        {"name": "arithmetic", "args": TINY},
        {"name": "gsm8k", "args": {"path": gsm8k_fixture}},  # all 12 into train...
        {"name": "gsm8k", "args": {"path": gsm8k_fixture}, "into": "gsm8k_test", "count": 4},  # ...but 4 are eval
    ])
    ds = read_dataset(str(path))
    assert list(ds) == ["base", "train", "validation", "test", "test_ood", "gsm8k_test"]
    assert len(ds["gsm8k_test"]) == 4
    train_gsm = [r for r in ds["train"] if r["family"] == "gsm8k"]
    assert len(train_gsm) == 8 and not {r["question"] for r in train_gsm} & set(ds["gsm8k_test"]["question"])
    stats = json.loads((path / "stats.json").read_text())
    assert stats["decontamination"]["removed"]["train"]["imported"]["exact"] == 4


@pytest.mark.parametrize("mode,expected", [("none", 4), ("exact", 3), ("normalized", 2)])
def test_dedup_modes(tmp_path, mode, expected):
    q = "Ann has 3 apples and buys 4 more. How many apples does she have?"
    imported = gsm8k_file(tmp_path / "dups.jsonl", [q, q, q.upper().replace(" ", "  "),
                                                     "Bob has 2 pears. How many pears does Bob have?"])
    path = build(tmp_path, n_train=300, dedup=mode, train_steps=[3, 6],
                 tasks=[{"name": "arithmetic", "args": TINY}, {"name": "gsm8k", "args": {"path": imported}}])
    rows = jsonl(path / "jsonl/train.jsonl")
    assert sum(r["family"] == "gsm8k" for r in rows) == expected
    if mode == "normalized":  # generated problems are unique too, and still exactly n_train of them
        keys = [question_key(r["question"]) for r in rows]
        assert len(keys) == len(set(keys)) == 300 + expected


def test_on_error_raise_names_file_and_line(tmp_path, gsm8k_fixture):
    with pytest.raises(data.DataError, match=r"gsm8k_sample\.jsonl:15.*on_error: skip"):
        build(tmp_path, on_error="raise", tasks=[{"name": "arithmetic", "args": TINY},
                                                {"name": "gsm8k", "args": {"path": gsm8k_fixture}}])
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "data.tmp").exists()


def test_on_error_skip_counts(tmp_path, gsm8k_fixture):
    path = build(tmp_path, on_error="skip", tasks=[{"name": "arithmetic", "args": TINY},
                                                   {"name": "gsm8k", "args": {"path": gsm8k_fixture}}])
    src = json.loads((path / "stats.json").read_text())["sources"][1]
    assert src["report"]["read"] == 16 and src["report"]["kept"] == 12
    assert src["report"]["rejected"] == {"bad_annotation": 1, "final_mismatch": 1, "malformed": 2}
    assert sum(r["family"] == "gsm8k" for r in jsonl(path / "jsonl/train.jsonl")) == 12
    assert '"malformed": 2' in (path / "README.md").read_text()
    assert "MIT" in (path / "LICENSE.md").read_text()  # the card's license: other links here
