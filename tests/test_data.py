"""The data stage: determinism, decontamination, dedup, mixing, the card, exports, importers'
errors, bad recipes and interrupted builds. Small datasets; no torch except the renderer test."""
import glob
import hashlib
import json
import os
import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from reasonlm import data
from reasonlm.config import DataConfig, load_recipe
from reasonlm.tasks import get_task, known_tasks

REPO = Path(__file__).resolve().parents[1]
TINY = {"digits": 1, "ops": "+-", "min_value": 0, "max_value": 9}
FIXTURE = REPO / "data" / "fixtures" / "gsm8k_sample.jsonl"


def cfg(**kw) -> DataConfig:
    base = dict(tasks=[{"name": "arithmetic", "args": TINY}], n_train=600, n_base=200, n_validation=50,
                n_test_per_steps=10, workers=1)
    base.update(kw)
    return DataConfig(**base)


def build(tmp_path, name="run", **kw) -> Path:
    return Path(data.run(cfg(**kw), str(tmp_path / name)))


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


# --- determinism ---------------------------------------------------------------------------------
def test_same_recipe_same_bytes_for_any_number_of_workers(tmp_path):
    # > 2 jobs of JOB_ROWS, shards of 1500 rows, a curriculum: every streaming path is exercised
    kw = dict(n_train=2 * data.JOB_ROWS + 500, shard_rows=1500, curriculum=True, dedup="normalized",
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


# --- decontamination ---------------------------------------------------------------------------
def test_no_eval_question_in_train_or_base(tmp_path):
    path = build(tmp_path, n_train=2000)
    ds = data.load(str(path))
    evals = {data.normalize_question(q) for s in data.EVAL_SPLITS for q in ds[s]["question"]}
    assert evals and len(evals) == sum(len(ds[s]) for s in data.EVAL_SPLITS)  # eval splits are distinct
    for split in ("train", "base"):
        assert not evals & {data.normalize_question(q) for q in ds[split]["question"]}
    report = json.loads((path / "decontamination.json").read_text())
    assert report["splits"]["train"]["generated"]["exact"] > 0  # 1-3 step chains do collide, and were replaced
    assert len(ds["train"]) == 2000


def test_planted_arithmetic_is_caught_by_exact_match(tmp_path):
    task, rng = get_task("arithmetic", **TINY), random.Random(7)
    planted = sorted({task.generate(rng, 2)["question"] for _ in range(300)})  # short: < 8 words
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps({"question": q.replace("+", " + ")}) + "\n" for q in planted))
    path = build(tmp_path, n_train=1500, decontaminate_against=[str(suite)])
    train = {data.normalize_question(r["question"]) for r in jsonl(path / "jsonl/train.jsonl")}
    assert not train & {data.normalize_question(q) for q in planted}
    report = json.loads((path / "decontamination.json").read_text())
    assert report["against"][str(suite)] == len(planted)
    assert report["splits"]["train"]["generated"]["exact"] > 0
    assert report["splits"]["train"]["generated"]["ngram"] == 0  # arithmetic is never n-gram tested
    assert any(e["matches"].startswith(f"{suite}:") for e in report["splits"]["train"]["generated"]["examples"])


def test_planted_word_problem_8gram_is_caught(tmp_path):
    wp, rng = get_task("word_problems"), random.Random(3)
    suite_qs = [wp.generate(rng, 3)["question"] for _ in range(5)]
    suite = tmp_path / "eval_suite.jsonl"
    suite.write_text("".join(json.dumps({"question": q}) + "\n" for q in suite_qs))
    words = data.words(suite_qs[0])
    eight, seven = " ".join(words[2:10]), " ".join(words[2:9])
    imported = gsm8k_file(tmp_path / "train.jsonl", [
        f"Before lunch, {eight}. How many are there?",  # shares 8 words with a suite question: removed
        f"Before lunch, {seven}. How many are there?",  # shares only 7: kept
        "A completely unrelated question about 3 kites and 4 birds flying over the hill at noon today?",
    ])
    path = build(tmp_path, n_train=300, decontaminate_against=[str(suite)],
                 tasks=[{"name": "arithmetic", "args": TINY}, {"name": "gsm8k", "args": {"path": imported}}])
    kept = [r["question"] for r in jsonl(path / "jsonl/train.jsonl") if r["family"] == "gsm8k"]
    assert len(kept) == 2 and not any(eight in " ".join(data.words(q)) for q in kept)
    removed = json.loads((path / "decontamination.json").read_text())["splits"]["train"]["imported"]
    assert removed["ngram"] == 1 and removed["examples"][0]["reason"] == "ngram"
    assert removed["examples"][0]["matches"] == f"{suite}:1"
    card = (path / "README.md").read_text()
    assert "## Decontamination" in card and "| train | imported | 0 | 1 |" in card


def test_blocklist_rules():
    b = data.Blocklist(8)
    long_q = "Mia buys 5 boxes of eggs. Each box holds 12 eggs. She gives 7 eggs to Omar. How many eggs are left?"
    b.add(long_q, "suite:1", "suite")
    b.add("3+4-2", "suite:2", "suite")
    b.add("7 + 1 - 3", "test-0", "test", grams=False)  # generated eval split: exact only
    b.drop_boilerplate()
    hit = lambda q: b.hit(q, data.normalize_question(q))
    assert hit("mia buys 5 boxes of eggs, each box holds 12 eggs!")[0] == "ngram"
    assert hit("Liam buys 5 boxes of eggs. Each crate holds 12 eggs.") is None  # 6 shared words in a row
    assert hit("3 + 4 - 2") == ("exact", "suite:2")  # normalisation folds spacing
    assert data.normalize_question("Solve for X:  3x + 7 = 22.") == data.normalize_question("solve for x 3x+7=22")
    assert data.normalize_question("It costs $2.50.") == "it costs 2.50"
    assert hit("3+4-2+1") is None  # short questions are never n-gram tested
    # a phrase in BOILERPLATE or more eval questions is template text, not any question's content
    b = data.Blocklist(8)
    for i in range(data.BOILERPLATE):
        b.add(f"State the final answer to the following arithmetic problem: {i} + {i} =", f"s:{i}", "s")
    b.drop_boilerplate()
    assert b.boilerplate > 0
    assert b.hit("State the final answer to the following arithmetic problem: 9 + 8 - 7 + 6 =", "x") is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=list("0123456789+-*/() .,=$xX\t\n") + ["٣", "İ"], max_size=30))
def test_normalize_question_short_cut_agrees_with_the_rules(q):
    assert data.normalize_question(q) == data.fold_question(q)


def test_chat_views_are_json_dumps_of_the_messages(tmp_path):
    """The views encode the question and completion strings into a fixed frame: byte-identical
    to json.dumps of the whole messages, whatever the text holds."""
    from reasonlm.answer import prompt_messages, render_completion
    writer = data.SplitWriter(str(tmp_path), "train", cfg(), data.SplitStats(None, 1), "fp")
    questions = ["(7+5)*3-4", 'Ünïcode "quotes" \\ back\nslash\t\x00 \u2028', "emoji 😀 </s> {}", ""]
    for q in questions:
        writer.add({"family": "x", "question": q, "steps": ["1+1=2", 'a "b"'], "answer": "2", "n_steps": 2,
                    "meta": "{}"})
    for f in writer.views:
        f.close()
    chat = (tmp_path / "jsonl/train.chat.jsonl").read_text(encoding="utf-8").splitlines()
    pc = (tmp_path / "jsonl/train.prompt_completion.jsonl").read_text(encoding="utf-8").splitlines()
    for q, chat_line, pc_line in zip(questions, chat, pc, strict=True):
        reply = [{"role": "assistant", "content": render_completion(["1+1=2", 'a "b"'], "2")}]
        assert chat_line == json.dumps({"messages": prompt_messages(q) + reply})
        assert pc_line == json.dumps({"prompt": prompt_messages(q), "completion": reply})


def test_imported_eval_split_is_a_split_and_train_is_clean_of_it(tmp_path, gsm8k_fixture):
    path = build(tmp_path, on_error="skip", tasks=[
        {"name": "arithmetic", "args": TINY},
        {"name": "gsm8k", "args": {"path": gsm8k_fixture}},  # all 12 into train...
        {"name": "gsm8k", "args": {"path": gsm8k_fixture}, "into": "gsm8k_test", "count": 4},  # ...but 4 are eval
    ])
    ds = data.load(str(path))
    assert list(ds) == ["base", "train", "validation", "test", "test_ood", "gsm8k_test"]
    assert len(ds["gsm8k_test"]) == 4
    train_gsm = [r for r in ds["train"] if r["family"] == "gsm8k"]
    assert len(train_gsm) == 8 and not {r["question"] for r in train_gsm} & set(ds["gsm8k_test"]["question"])
    stats = json.loads((path / "stats.json").read_text())
    assert stats["decontamination"]["removed"]["train"]["imported"]["exact"] == 4


# --- dedup -------------------------------------------------------------------------------------
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
        keys = [data.normalize_question(r["question"]) for r in rows]
        assert len(keys) == len(set(keys)) == 300 + expected


def test_dedup_of_a_too_small_space_is_a_clear_error(tmp_path):
    # 1-digit single steps with results 0..9: only 110 distinct problems exist
    with pytest.raises(data.DataError, match="no new 1-step arithmetic problem in .* draws"):
        build(tmp_path, n_train=500, dedup="normalized", train_steps=[1, 1], ood_steps=[2, 3], eval_min_steps=1)


# --- mixing ------------------------------------------------------------------------------------
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


def test_a_base_only_family_stays_in_base_and_is_decontaminated_on_its_problem(tmp_path):
    """`splits: [base]` keeps one-step-of-an-expression documents out of train and the eval splits;
    their expression, not the wrapped question, is what decontamination compares with eval questions."""
    path = build(tmp_path, n_base=3000, base_steps=[1, 2], tasks=[
        {"name": "arithmetic", "args": TINY},
        {"name": "arithmetic_step", "weight": 2, "steps": [1, 1], "splits": ["base"], "args": {**TINY, "length": [2, 3]}}])
    ds = data.load(str(path))
    base = [r for r in ds["base"] if r["family"] == "arithmetic_step"]
    assert abs(len(base) / 1500 - 2 / 3) < 0.05 and all(r["question"].startswith("One step of ") for r in base)
    assert all(r["family"] == "arithmetic" for s in ("train", *data.EVAL_SPLITS) for r in ds[s])
    evals = {q for s in data.EVAL_SPLITS for q in ds[s]["question"]}
    assert not evals & {r["question"][len("One step of "):] for r in base}
    report = json.loads((path / "decontamination.json").read_text())
    assert report["splits"]["base"]["generated"]["exact"] > 0  # 2-3 op expressions of 0..9 do hit eval questions


def test_curriculum_orders_train_by_steps(tmp_path):
    rows = jsonl(build(tmp_path, curriculum=True) / "jsonl/train.jsonl")
    assert [r["n_steps"] for r in rows] == sorted(r["n_steps"] for r in rows)
    assert [r["id"] for r in rows] == [f"train-{i:07d}" for i in range(len(rows))]


def test_a_family_must_cover_every_split_steps(tmp_path):
    with pytest.raises(data.DataError, match="needs 7-step problems but no family"):
        build(tmp_path, tasks=[{"name": "arithmetic", "args": TINY, "steps": [1, 6]}])


# --- outputs: card, exports, views ----------------------------------------------------------
def test_card_has_stats_provenance_and_hub_configs(tmp_path, capsys):
    c = cfg()
    path = Path(data.run(c, str(tmp_path / "run")))
    card = (path / "README.md").read_text()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "apache-2.0" and meta["size_categories"] == ["n<1K"]
    default = next(x for x in meta["configs"] if x["config_name"] == "default")
    for entry in default["data_files"]:  # every split's files exist under the card's globs
        assert glob.glob(str(path / entry["path"])), entry
    stats = json.loads((path / "stats.json").read_text())
    settings = {k: v for k, v in data.asdict(c).items() if k != "workers"}
    chash = hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert stats["provenance"]["config_sha256"] == chash and chash in card
    assert stats["provenance"]["generator_version"] == data.GENERATOR_VERSION
    q = stats["splits"]["train"]["lengths"]["question_chars"]
    assert q["min"] <= q["p50"] <= q["p95"] <= q["max"] and q["min"] <= q["mean"] <= q["max"]
    assert stats["splits"]["train"]["by_steps"] == {str(s): 100 for s in range(1, 7)}
    for text in ("| split | measure | min | mean | p50 | p95 | max |", "| train | completion_chars |",
                 "| test_ood | 20 | arithmetic 20 | 7: 10, 8: 10 |", "Apache-2.0", "## Provenance"):
        assert text in card
    capsys.readouterr()
    data.print_stats(str(path))
    printed = capsys.readouterr().out
    assert "| train | question_words |" in printed and chash in printed
    with pytest.raises(data.DataError, match="no stats.json"):
        data.print_stats(str(tmp_path))


def test_token_stats_with_a_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from tests.helpers import tiny_model_and_tokenizer
    _, tok = tiny_model_and_tokenizer()
    tok.save_pretrained(str(tmp_path / "tok"))
    path = build(tmp_path, tokenizer=str(tmp_path / "tok"))
    stats = json.loads((path / "stats.json").read_text())
    assert stats["splits"]["train"]["lengths"]["tokens"]["min"] > 5
    assert "tokens (every 1)" in (path / "README.md").read_text()


def test_exports_round_trip(tmp_path):
    path = build(tmp_path, shard_rows=250)  # train: 600 rows in 3 shards
    ds = data.load(str(path))
    for split in ds:
        rows = ds[split].to_list()
        assert rows == jsonl(path / f"jsonl/{split}.jsonl")
        shards = sorted(glob.glob(str(path / f"parquet/{split}-*.parquet")))
        assert [r for s in shards for r in pq.read_table(s).to_pylist()] == rows
        assert ds[split].features == data.features()
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
    assert list(default) == list(data.load(str(path)))
    assert default["train"].to_list() == data.load(str(path))["train"].to_list()
    assert default["train"].features == data.features()
    chat = load_dataset("json", data_files=str(path / "jsonl/test.chat.jsonl"), split="train",
                        cache_dir=str(tmp_path / "cache"))
    assert len(chat) == 50 and chat[0]["messages"][0]["role"] == "user"


def test_chat_view_tokens_are_the_trainers_tokens(tmp_path):
    pytest.importorskip("torch")
    from reasonlm.answer import encode_prompt
    from reasonlm.train import encode_rows
    from tests.helpers import tiny_model_and_tokenizer
    _, tok = tiny_model_and_tokenizer()
    path = build(tmp_path)
    ds = data.load(str(path))
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


# --- importers' errors, bad recipes, interrupted builds --------------------------------------
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


def test_unknown_family_lists_the_known_ones(tmp_path):
    with pytest.raises(data.DataError) as e:
        build(tmp_path, tasks=[{"name": "arithmatic"}])
    msg = str(e.value)
    assert "arithmatic" in msg and all(name in msg for name in known_tasks()) and "\n" not in msg


@pytest.mark.parametrize("spec,match", [
    ({"name": "arithmetic", "count": 5}, "'count' is for importers"),
    ({"name": "gsm8k", "args": {"path": "x.jsonl"}, "weight": 2}, "'weight' is for generated"),
    ({"name": "gsm8k", "args": {"path": "x.jsonl"}, "into": "test"}, "into must be 'train' or a new eval split"),
    ({"name": "arithmetic", "steps": [3, 1]}, "steps must be"),
    ({"name": "arithmetic", "stepz": [1, 3]}, "unknown key"),
    ({"name": "arithmetic", "splits": ["bass"]}, "splits must be a non-empty list"),
])
def test_bad_source_specs(tmp_path, spec, match):
    with pytest.raises(data.DataError, match=match):
        build(tmp_path, tasks=[spec])


def test_missing_suite_is_an_error(tmp_path):
    with pytest.raises(data.DataError, match="decontaminate_against: .*nope.jsonl does not exist"):
        build(tmp_path, decontaminate_against=[str(tmp_path / "nope.jsonl")])


def test_interrupted_build_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    calls = {"n": 0}
    close = data.SplitWriter._close_shard

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 4:  # mid-write: some splits and shards are already on disk
            raise KeyboardInterrupt
        close(self)

    monkeypatch.setattr(data.SplitWriter, "_close_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, shard_rows=100)
    assert not (tmp_path / "run" / "data").exists() and not (tmp_path / "run" / "data.tmp").exists()
    # a previous good dataset survives a failed rebuild untouched
    monkeypatch.setattr(data.SplitWriter, "_close_shard", close)
    good = build(tmp_path)
    before = tree_digest(good)
    monkeypatch.setattr(data, "dataset_card", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        build(tmp_path, seed=5)
    assert tree_digest(good) == before and not (tmp_path / "run" / "data.tmp").exists()


# --- recipes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(glob.glob(str(REPO / "data" / "*.yaml"))))
def test_data_recipes_load_and_name_their_command(path):
    with open(path) as f:
        assert f.readline().strip() == f"# reasonlm data data/{os.path.basename(path)}"
    recipe = load_recipe(path)
    data.make_sources(recipe.data)  # every family and its knobs are valid
    data.check_settings(recipe.data)


def test_mix_recipe_runs_small(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name repo-relative paths (eval/, data/fixtures/)
    recipe = load_recipe(str(REPO / "data" / "mix-reasoning.yaml"),
                         ["data.n_train=400", "data.n_base=100", "data.n_validation=40", "data.n_test_per_steps=5",
                          f"out_dir={tmp_path}"])
    path = Path(data.run(recipe.data, recipe.out_dir))
    stats = json.loads((path / "stats.json").read_text())
    assert len(stats["splits"]["train"]["by_family"]) == 4 and stats["splits"]["train"]["rows"] == 400


def test_decontamination_without_reasoning_gym_warns_and_goes_on(monkeypatch, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "reasoning_gym" else real(n, *a))
    assert list(data.suite_questions(str(REPO / "eval" / "reasoning-gym.yaml"))) == []
    assert "reasoning_gym not installed" in capsys.readouterr().out
