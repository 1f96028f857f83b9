"""The data stage end to end (reasonlm/data/__init__.py): determinism, what lands in which split,
the exports and views, interrupted builds, the shipped data recipes. Small datasets; no torch except
the tokenizer tests."""
import glob
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reasonlm import data
from reasonlm.config import load_recipe
from reasonlm.data import card
from reasonlm.data.generate import JOB_ROWS
from reasonlm.data.mix import EVAL_SPLITS
from reasonlm.data.writer import SplitWriter, features
from reasonlm.example import question_key, read_dataset
from tests.data_helpers import REPO, TINY, build, jsonl, tree_digest


def test_same_recipe_same_bytes_for_any_number_of_workers(tmp_path):
    # > 2 jobs of JOB_ROWS, shards of 1500 rows, a curriculum: every streaming path is exercised
    kw = dict(n_train=2 * JOB_ROWS + 500, shard_rows=1500, curriculum=True, dedup="normalized",
              tasks=[{"name": "arithmetic", "weight": 2, "args": TINY, "steps": [2, 8]},
                     {"name": "object_swaps", "weight": 1}])
    one = build(tmp_path, "one", workers=1, **kw)
    two = build(tmp_path, "two", workers=2, **kw)
    again = build(tmp_path, "again", workers=2, **kw)
    a, b = tree_digest(one), tree_digest(two)
    assert b == tree_digest(again)
    # config.yaml records the workers setting; not one byte of the data, card or reports differs
    assert a.pop("config.yaml") != b.pop("config.yaml") and a == b
    assert len([k for k in a if k.startswith("train/data-")]) == 3  # 4500 rows in shards of 1500
    assert {"dataset_dict.json", "train/state.json", "README.md", "stats.json", "decontamination.json",
            "jsonl/train.chat.jsonl", "parquet/train-00002-of-00003.parquet"} <= set(a)


def test_a_different_seed_gives_different_data(tmp_path):
    a = build(tmp_path, "a", seed=0)
    b = build(tmp_path, "b", seed=1)
    assert (a / "jsonl/train.jsonl").read_bytes() != (b / "jsonl/train.jsonl").read_bytes()


def test_no_eval_question_in_train_or_base(tmp_path):
    path = build(tmp_path, n_train=2000)
    ds = read_dataset(str(path))
    evals = {question_key(q) for s in EVAL_SPLITS for q in ds[s]["question"]}
    assert evals and len(evals) == sum(len(ds[s]) for s in EVAL_SPLITS)  # eval splits are distinct
    for split in ("train", "base"):
        assert not evals & {question_key(q) for q in ds[split]["question"]}
    report = json.loads((path / "decontamination.json").read_text())
    assert report["splits"]["train"]["generated"]["exact"] > 0  # 1-3 step chains do collide, and were replaced
    assert len(ds["train"]) == 2000


def test_a_base_only_family_stays_in_base_and_is_decontaminated_on_its_problem(tmp_path):
    """`splits: [base]` keeps one-step-of-an-expression documents out of train and the eval splits;
    their expression, not the wrapped question, is what decontamination compares with eval questions."""
    path = build(tmp_path, n_base=3000, base_steps=[1, 2], tasks=[
        {"name": "arithmetic", "args": TINY},
        {"name": "arithmetic_step", "weight": 2, "steps": [1, 1], "splits": ["base"], "args": {**TINY, "length": [2, 3]}}])
    ds = read_dataset(str(path))
    base = [r for r in ds["base"] if r["family"] == "arithmetic_step"]
    assert abs(len(base) / 1500 - 2 / 3) < 0.05 and all(r["question"].startswith("One step of ") for r in base)
    assert all(r["family"] == "arithmetic" for s in ("train", *EVAL_SPLITS) for r in ds[s])
    evals = {q for s in EVAL_SPLITS for q in ds[s]["question"]}
    assert not evals & {r["question"][len("One step of "):] for r in base}
    report = json.loads((path / "decontamination.json").read_text())
    assert report["splits"]["base"]["generated"]["exact"] > 0  # 2-3 op expressions of 0..9 do hit eval questions


def test_token_stats_with_a_tokenizer(tmp_path):
    from tests.helpers import tiny_model_and_tokenizer
    _, tok = tiny_model_and_tokenizer()
    tok.save_pretrained(str(tmp_path / "tok"))
    path = build(tmp_path, tokenizer=str(tmp_path / "tok"))
    stats = json.loads((path / "stats.json").read_text())
    assert stats["splits"]["train"]["lengths"]["tokens"]["min"] > 5
    assert "tokens (every 1)" in (path / "README.md").read_text()


def test_exports_round_trip(tmp_path):
    path = build(tmp_path, shard_rows=250)  # train: 600 rows in 3 shards
    ds = read_dataset(str(path))
    for split in ds:
        rows = ds[split].to_list()
        assert rows == jsonl(path / f"jsonl/{split}.jsonl")
        shards = sorted(glob.glob(str(path / f"parquet/{split}-*.parquet")))
        assert [r for s in shards for r in pq.read_table(s).to_pylist()] == rows
        assert ds[split].features == features()
    assert len(glob.glob(str(path / "parquet/train-*.parquet"))) == 3
    # the chat and prompt/completion views carry the same problems through the one renderer
    from reasonlm.answer import prompt_messages, render_completion
    for row, chat, pc in zip(ds["train"], jsonl(path / "jsonl/train.chat.jsonl"),
                             jsonl(path / "jsonl/train.prompt_completion.jsonl")):
        reply = {"role": "assistant", "content": render_completion(row["steps"], row["answer"])}
        assert chat == {"messages": prompt_messages(row["question"]) + [reply]}
        assert pc == {"prompt": prompt_messages(row["question"]), "completion": [reply]}


def test_hub_configs_load_with_load_dataset(tmp_path):
    from datasets import load_dataset
    path = build(tmp_path)
    default = load_dataset(str(path), cache_dir=str(tmp_path / "cache"))  # the card's `configs:`
    assert list(default) == list(read_dataset(str(path)))
    assert default["train"].to_list() == read_dataset(str(path))["train"].to_list()
    assert default["train"].features == features()
    chat = load_dataset("json", data_files=str(path / "jsonl/test.chat.jsonl"), split="train",
                        cache_dir=str(tmp_path / "cache"))
    assert len(chat) == 50 and chat[0]["messages"][0]["role"] == "user"


def test_chat_view_tokens_are_the_trainers_tokens(tmp_path):
    from reasonlm.answer import encode_prompt
    from reasonlm.train import encode_rows
    from tests.helpers import tiny_model_and_tokenizer
    _, tok = tiny_model_and_tokenizer()
    path = build(tmp_path)
    ds = read_dataset(str(path))
    rows = ds["train"].select(range(40))
    trained = encode_rows(rows, tok, "cot", 10**6)
    for (ids, labels), chat in zip(trained, jsonl(path / "jsonl/train.chat.jsonl")[:40]):
        messages = chat["messages"]
        prompt = encode_prompt(tok, messages[:-1])
        assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [-100] * len(prompt)
        full = tok.apply_chat_template(messages, tokenize=True)
        full = full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full
        # the template's whole conversation = the trainer's tokens + the template's trailing newline
        assert full[:len(ids)] == ids
        assert tok.decode(full[len(ids):]).strip() == ""


def test_interrupted_build_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    calls = {"n": 0}
    close = SplitWriter._close_shard

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 4:  # mid-write: some splits and shards are already on disk
            raise KeyboardInterrupt
        close(self)

    monkeypatch.setattr(SplitWriter, "_close_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, shard_rows=100)
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "data.tmp").exists()
    # a previous good dataset survives a failed rebuild untouched
    monkeypatch.setattr(SplitWriter, "_close_shard", close)
    good = build(tmp_path)
    before = tree_digest(good)
    monkeypatch.setattr(card, "dataset_card", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        build(tmp_path, seed=5)
    assert tree_digest(good) == before and not (tmp_path / "run" / "data.tmp").exists()


def test_mix_recipe_runs_small(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name repo-relative paths (eval/, data/fixtures/)
    recipe = load_recipe(str(REPO / "data" / "mix-reasoning.yaml"),
                         ["data.n_train=400", "data.n_base=100", "data.n_validation=40", "data.n_test_per_steps=5",
                          f"out_dir={tmp_path}"])
    path = Path(data.run(recipe))
    stats = json.loads((path / "stats.json").read_text())
    assert len(stats["splits"]["train"]["by_family"]) == 4 and stats["splits"]["train"]["rows"] == 400
