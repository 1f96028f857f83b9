"""Bring your own data: the `records` importer (tasks/records.py) from JSONL, CSV, parquet and the Hub,
by column mapping, with answer-only rows, in the data stage (`data.tasks`) and in eval (`file:` sources)."""
import csv
import json

import pytest

from reasonlm import data
from reasonlm.config import EvalConfig
from reasonlm.example import Example, read_dataset
from reasonlm.sources import SourceError, load_sources
from reasonlm.tasks import get_task
from reasonlm.tasks.gsm8k import FIXTURE_RECORDS
from reasonlm.tasks.records import Records
from tests.data_helpers import TINY, build, jsonl

# their column names, not ours: two rows with steps (a list; one string with a step per line),
# two answer-only rows (one numeric with a currency sign, one a word), one row with no question
ROWS = [
    {"prompt": "Ann has 3 apples and buys 4 more. How many apples?", "target": "7", "work": ["3+4=7"], "k": 1},
    {"prompt": "What is (2+3)*4?", "target": "20", "work": "2+3=5\n5*4=20", "k": 2},
    {"prompt": "A book costs $1,200 plus $5 shipping. What is the total?", "target": "$1,205", "work": None, "k": None},
    {"prompt": "Which planet is largest?", "target": "Jupiter", "work": None, "k": None},
    {"prompt": "", "target": "3", "work": None, "k": None},
]
COLUMNS = {"question": "prompt", "answer": "target", "steps": "work", "n_steps": "k"}


def write(path, rows=ROWS):
    """The rows as a .jsonl, .csv (steps as one string, a step per line) or .parquet file."""
    path = str(path)
    if path.endswith(".jsonl"):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif path.endswith(".csv"):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: "\n".join(v) if isinstance(v, list) else ("" if v is None else v) for k, v in r.items()})
    else:
        import pyarrow as pa  # under datasets, a dependency
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist([{**r, "work": [r["work"]] if isinstance(r["work"], str) else r["work"]}
                                             for r in rows]), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_records_from_every_file_format_by_column(tmp_path, suffix):
    examples, report = Records(write(tmp_path / f"mine{suffix}"), columns=COLUMNS).load()
    assert report == {"read": 5, "kept": 4, "rejected": {"bad_annotation": 0, "final_mismatch": 0, "malformed": 1},
                      "answer_only": 2}
    a, b, c, d = examples
    assert (a.question, a.answer, a.steps, a.n_steps, a.family) == (ROWS[0]["prompt"], "7", ("3+4=7",), 1, "records")
    assert b.steps == ("2+3=5", "5*4=20") and b.n_steps == 2
    assert (c.answer, c.steps, c.n_steps) == ("1205", (), 0)  # numbers written canonically; 0 = unknown
    assert d.answer == "Jupiter" and d.steps == ()
    assert [e.id for e in examples] == ([f"line{i}" for i in (1, 2, 3, 4)] if suffix != ".csv"
                                        else [f"line{i}" for i in (2, 3, 4, 5)])  # csv: line 1 is the header


def test_answer_only_rows_get_answer_only_verdicts():
    task = get_task("records")  # eval checks a dataset's records rows with a task built without knobs
    answer_only = Example("Which planet is largest?", "Jupiter", family="records")
    right, wrong = task.check(answer_only, ["It is big"], "jupiter"), task.check(answer_only, [], "Mars")
    assert right.answer_correct and not right.steps_checkable and right.step_ok == [] and right.accepted
    assert not right.right_answer_wrong_chain
    assert not wrong.answer_correct and not wrong.accepted
    worked = Example("What is (2+3)*4?", "20", ("2+3=5", "5*4=20"), 2, "records")
    good, bad = task.check(worked, ["2+3=5", "5*4=20"], "20"), task.check(worked, ["2+3=6", "6*4=20"], "20")
    assert good.steps_checkable and good.chain_valid and good.accepted
    assert bad.steps_checkable and bad.first_bad_step == 1 and bad.right_answer_wrong_chain


def test_worked_solutions_and_the_default_columns(tmp_path):
    # GSM8K's own file read as records: its `answer` column is a worked solution with annotations
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in FIXTURE_RECORDS))
    examples, report = Records(str(path), columns={"question": "question", "solution": "answer"}).load()
    assert report["kept"] == len(FIXTURE_RECORDS) and report["answer_only"] == 0
    assert examples[0].answer == "54" and examples[0].steps == ("On Tuesday she picked 36/2=18 strawberries.",
                                                                 "In total she picked 36+18=54 strawberries.")
    # no '####': the last number of the last line is the answer; no `columns`: fields by their own names
    path = write(tmp_path / "plain.jsonl", [{"question": "What is 6*7?", "solution": "6*7=42\nSo the answer is 42."},
                                            {"question": "Name a primary colour.", "answer": "red", "id": "c1"},
                                            {"question": "What is 2+2?", "solution": "2+2=5\n#### 5"}])
    examples, report = Records(path).load()
    assert [(e.answer, e.steps, e.id) for e in examples] == [
        ("42", ("6*7=42", "So the answer is 42."), "line1"), ("red", (), "c1")]
    assert report["rejected"]["bad_annotation"] == 1  # its own gold steps fail the checker: not kept


def test_bad_settings_and_records_are_one_line(tmp_path):
    path = write(tmp_path / "mine.jsonl")
    for columns, match in [({"question": "prompt"}, "answer"), ({"question": "prompt", "answer": "target", "x": "y"}, "unknown"),
                           ("prompt", "columns must map")]:
        with pytest.raises(ValueError, match=match):
            Records(path, columns=columns)
    with pytest.raises(ValueError, match=r"mine\.jsonl: no column 'answer_text' in its first record \(it has: prompt, "):
        Records(path, columns={"question": "prompt", "answer": "answer_text"}).load()
    broken = write(tmp_path / "broken.jsonl", ROWS[:1] + [{"prompt": "What is 1+1?"}])
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: malformed record: no column 'target'"):
        Records(broken, columns=COLUMNS, on_error="raise").load()
    with pytest.raises(ValueError, match="no such file"):
        Records(str(tmp_path / "missing.csv")).load()
    with pytest.raises(ValueError, match="needs a path"):
        Records().load()


def test_hub_dataset_rows_and_offline_error(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, config, split):
        calls.append((path, config, split))
        return [{"q": "What is 2+5?", "a": 7}, {"q": "What is 1+1?"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples, report = Records("someone/my-problems", columns={"question": "q", "answer": "a"}, split="test").load()
    assert calls == [("someone/my-problems", None, "test")] and report["kept"] == 1 and examples[0].answer == "7"

    def offline(path, config, split):
        raise ConnectionError("Couldn't reach 'someone/my-problems' on the Hub (OfflineModeIsEnabled)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as e:
        Records("someone/my-problems").load()
    message = str(e.value)
    assert "\n" not in message and "'someone/my-problems'" in message
    assert "neither a local file nor reachable on the Hub (HF_HUB_OFFLINE=1 is set)" in message


# --- the data stage ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_data_stage_keeps_answer_only_rows(tmp_path, suffix):
    path = write(tmp_path / f"mine{suffix}")
    out = build(tmp_path, on_error="skip", tasks=[
        {"name": "arithmetic", "args": TINY},
        {"name": "records", "args": {"path": path, "columns": COLUMNS}},
        {"name": "records", "args": {"path": path, "columns": COLUMNS}, "into": "mine_test", "count": 2}])
    ds = read_dataset(str(out))
    train = [r for r in ds["train"] if r["family"] == "records"]
    assert len(ds["mine_test"]) == 2 and len(train) == 2  # 4 kept, 2 held out for mine_test
    assert not {r["question"] for r in train} & set(ds["mine_test"]["question"])
    answer_only = [r for r in jsonl(out / "jsonl/train.jsonl") + jsonl(out / "jsonl/mine_test.jsonl")
                   if r["family"] == "records" and not r["steps"]]
    assert {r["answer"] for r in answer_only} == {"1205", "Jupiter"}  # kept: answer-only rows are normal
    src = json.loads((out / "stats.json").read_text())["sources"][1]["report"]
    assert src["answer_only"] == 2 and src["rejected"]["malformed"] == 1 and src["failed_check"] == 0


def test_data_stage_bad_column_map_is_one_line(tmp_path):
    with pytest.raises(data.DataError, match=r"data\.tasks\[1\] \(records\): .*columns must name"):
        build(tmp_path, tasks=[{"name": "arithmetic", "args": TINY},
                               {"name": "records", "args": {"path": "x.csv", "columns": {"question": "q"}}}])


# --- eval: `file:` sources ------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_eval_file_source_by_column(tmp_path, suffix):
    path = write(tmp_path / f"mine{suffix}")
    cfg = EvalConfig(sources=[{"file": path, "columns": COLUMNS, "name": "mine"}, {"jsonl": write(
        tmp_path / "ours.jsonl", [{"question": "What is 1+2?", "answer": "3", "steps": ["1+2=3"], "n_steps": 1}])}])
    (mine, ours), skipped = load_sources(cfg)
    assert not skipped and mine.kind == "file" and mine.info["load"]["answer_only"] == 2
    assert [ex.answer for ex in mine.examples] == ["7", "20", "1205", "Jupiter"] and mine.task.name == "records"
    assert ours.examples[0].family == "arithmetic"  # the jsonl kind is unchanged


def test_eval_file_source_errors_name_the_source(tmp_path):
    path = write(tmp_path / "mine.csv")
    for spec, match in [({"file": path, "columns": {"question": "nope", "answer": "target"}}, "source 'mine': .*'nope'"),
                        ({"file": str(tmp_path / "gone.csv")}, "source 'gone': .*no such file"),
                        ({"file": path, "config": {"a": 1}}, "config must be a Hub dataset config name")]:
        with pytest.raises(SourceError, match=match):
            load_sources(EvalConfig(sources=[spec]))


# --- issue 30 -------------------------------------------------------------------------------------
def test_a_5mb_csv_cell_is_read_everywhere_and_one_past_the_limit_is_one_line(tmp_path, monkeypatch):
    """Fault 8: csv's default limit (131,072 characters) made a 5 MB quoted question a `_csv.Error`
    traceback in eval's `file:`, the data stage's `records` and `rl.task`, which all read through
    Records.load."""
    from reasonlm import rl
    from reasonlm.config import RLConfig
    from reasonlm.tasks import records
    path = tmp_path / "big.csv"
    long_question = "What is 2+3? " + "Think, " * 700_000  # ~5 MB, one quoted cell
    path.write_text(f'question,answer\n"What is 1+1?",2\n"{long_question}",5\n')
    examples, _ = Records(path=str(path)).load()
    assert [len(ex.question) for ex in examples] == [12, len(long_question.strip())]
    (source,), _ = load_sources(EvalConfig(sources=[{"file": str(path)}]))
    assert len(source.examples) == 2
    task = get_task("records", path=str(path))
    assert len(rl.imported_problems(task, RLConfig(task={"name": "records", "args": {"path": str(path)}},
                                                   n_steps=[1, 3], reward="outcome"))) == 2
    out = build(tmp_path, tasks=[{"name": "arithmetic", "args": TINY}, {"name": "records", "args": {"path": str(path)}}])
    assert max(len(q) for q in read_dataset(str(out))["train"]["question"]) == len(long_question.strip())
    monkeypatch.setattr(records, "CSV_FIELD_LIMIT", 1000)
    with pytest.raises(ValueError) as e:
        Records(path=str(path)).load()
    assert str(e.value) == f"{path}:3: a cell longer than 1,000 characters"
