"""Bad input through the command line and the public loaders: one line on stderr, exit 2, and
REASONLM_DEBUG=1 for the traceback (issue #17 items 10-12). docs/fault-cases.md lists every case."""
import json
import pickle

import pytest
from safetensors import SafetensorError

from reasonlm import cli
from reasonlm.config import EvalConfig, load_recipe
from reasonlm.sources import load_sources
from tests.eval_helpers import fake_report


def fails_with_one_line(capsys, argv, *fragments) -> str:
    """Run the CLI; it must exit 2 with exactly one stderr line holding every fragment."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# --- item 11: empty recipes and keys written twice, through every recipe command -----------------
@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n", "---\n", "train: {}\neval:\n",
                                  "train:\nbase: {}\n"])
@pytest.mark.parametrize("command", ["train", "eval"])  # (stages that need earlier outputs: a regression fails fast)
def test_an_empty_recipe_is_one_line(tmp_path, capsys, text, command):
    """Nothing set (an empty file, or only empty sections) would run every stage on the defaults."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    fails_with_one_line(capsys, [command, str(recipe), f"out_dir={tmp_path / 'out'}"], "is empty")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="is empty"):  # what data, base and pipeline load it with
        load_recipe(str(recipe), [f"out_dir={tmp_path / 'out'}"])


@pytest.mark.parametrize("text, key, lines", [
    ("out_dir: a\ntrain:\n  lr: 0.1\nout_dir: b\n", "out_dir", "lines 1 and 4"),
    ("train:\n  lr: 0.1\n  steps: 3\n  lr: 0.2\n", "lr", "lines 2 and 4"),
])
@pytest.mark.parametrize("command", ["train", "eval"])
def test_a_key_written_twice_is_one_line_naming_both_lines(tmp_path, capsys, text, key, lines, command):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    fails_with_one_line(capsys, [command, str(recipe), f"out_dir={tmp_path / 'out'}"],
                        f"key {key!r} is written twice ({lines})")


def test_a_recipe_that_is_not_utf8_names_the_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"out_dir: a\ntrain:\n  lr: 0.1 # caf\xe9\n")
    fails_with_one_line(capsys, ["train", str(recipe)], f"{recipe}:3: not UTF-8 text")


# --- item 10: gold answers that are not answers, files that are not UTF-8 --------------------------
def jsonl_suite(tmp_path, records: list) -> tuple[EvalConfig, str]:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return EvalConfig(sources=[{"jsonl": str(path)}]), str(path)


GOOD = {"question": "2+3", "answer": "5"}


@pytest.mark.parametrize("bad, message", [
    ({"question": "1+1", "answer": "two"}, "the gold answer 'two' is not a number, and arithmetic answers are numbers"),
    ({"question": "1+1", "answer": None}, "the gold answer must be a number or text, got null"),
    ({"question": "1+1", "answer": {"value": 2}}, "the gold answer must be a number or text"),
    ({"question": "1+1", "answer": [2]}, "the gold answer must be a number or text"),
    ({"question": "1+1", "answer": True}, "the gold answer must be a number or text, got true"),
    ({"question": "1+1", "answer": "  "}, "the gold answer must be a number or text"),
    ({"question": ["1+1"], "answer": "2"}, "the question must be non-empty text"),
    ({"question": "", "answer": "2"}, "the question must be non-empty text"),
    ({"question": "Who holds the ball?", "answer": 3, "family": "object_swaps"}, None),  # text family: fine
    ({"question": "1+1", "answer": "2", "family": "no_such_family"}, "no_such_family"),
])
def test_jsonl_gold_answers_that_are_not_answers_are_rejected_with_file_and_line(tmp_path, bad, message):
    cfg, path = jsonl_suite(tmp_path, [GOOD, GOOD | {"question": "4+4", "answer": 8}, bad])
    if message is None:
        sources, _ = load_sources(cfg)
        assert [ex.answer for ex in sources[0].examples] == ["5", "8", "3"]
        return
    with pytest.raises(ValueError) as e:
        load_sources(cfg)
    assert str(e.value).startswith(f"{path}:3: ") and message in str(e.value) and "\n" not in str(e.value)


def test_number_answers_are_read_as_written(tmp_path):
    cfg, _ = jsonl_suite(tmp_path, [GOOD, {"question": "1/2+1", "answer": 1.5}, {"question": "9-12", "answer": -3}])
    assert [ex.answer for ex in load_sources(cfg)[0][0].examples] == ["5", "1.5", "-3"]


def test_a_jsonl_file_that_is_not_utf8_names_file_and_line(tmp_path):
    cfg, path = jsonl_suite(tmp_path, [GOOD, GOOD])
    with open(path, "ab") as f:
        f.write(b'{"question": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(ValueError, match=f"^{path}:3: not UTF-8 text$"):
        load_sources(cfg)


def test_a_gsm8k_file_that_is_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "1+1=2\\n#### 2"}\n\xff\xfe\n')
    with pytest.raises(ValueError, match=f"{path}:2: not UTF-8 text$"):
        load_sources(EvalConfig(sources=[{"gsm8k": str(path)}]))


def test_a_chat_session_that_is_not_utf8_names_file_and_line(tmp_path):
    from reasonlm.chat.session import load_session
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'{"messages": []}\n\x80\n')
    with pytest.raises(ValueError, match=f"^{path}:2: not UTF-8 text$"):
        load_session(str(path))


# --- item 12: one error path in the CLI ----------------------------------------------------------
def test_a_baseline_into_a_missing_folder_is_one_line(tmp_path, capsys):
    report, _ = fake_report(tmp_path, "a", [1, 0, 1])
    target = tmp_path / "missing" / "dir" / "b.json"
    fails_with_one_line(capsys, ["eval", "baseline", report, str(target)],
                        f"cannot write {target}: No such file or directory")
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("samples_path", ["/etc/passwd", "../b/samples.jsonl", ".."])
def test_a_report_whose_samples_path_points_elsewhere_is_one_line(tmp_path, capsys, samples_path):
    a, _ = fake_report(tmp_path, "a", [1, 0, 1])
    b, report = fake_report(tmp_path, "b", [1, 1, 1])
    report["samples_path"] = samples_path
    (tmp_path / "b" / "report.json").write_text(json.dumps(report))
    fails_with_one_line(capsys, ["eval", "compare", a, b, "--metric", "chain_valid"],
                        f"samples_path {samples_path!r} is not a file name beside the report")


def test_a_samples_file_that_is_not_json_names_file_and_line(tmp_path, capsys):
    a, _ = fake_report(tmp_path, "a", [1, 0, 1])
    b, _ = fake_report(tmp_path, "b", [1, 1, 1])
    with open(tmp_path / "b" / "samples.jsonl", "a") as f:
        f.write("root:x:0:0:root:/root:/bin/bash\n")
    fails_with_one_line(capsys, ["eval", "compare", a, b, "--metric", "chain_valid"],
                        f"{tmp_path / 'b' / 'samples.jsonl'}:4: not a JSON sample")


@pytest.mark.parametrize("error, shown", [
    (FileNotFoundError(2, "No such file or directory", "/data/x.jsonl"), "No such file or directory: /data/x.jsonl"),
    (PermissionError(13, "Permission denied", "/root/out"), "Permission denied: /root/out"),
    (SafetensorError("Error while deserializing header: HeaderTooLarge"), "HeaderTooLarge"),
    (pickle.UnpicklingError("Weights only load failed.\nPlease file an issue."),
     "Weights only load failed. (REASONLM_DEBUG=1 shows the details)"),
    (RuntimeError("size mismatch"), None),  # a bug is not a user error: its traceback is kept
])
def test_user_facing_errors_are_one_line_and_debug_re_raises(capsys, monkeypatch, error, shown):
    def fail(args):
        raise error
    monkeypatch.setitem(cli.COMMANDS, "export", fail)
    if shown is None:
        with pytest.raises(type(error)):
            cli.main(["export", "run"])
        return
    assert fails_with_one_line(capsys, ["export", "run"], shown).endswith(f"{shown}\n")
    monkeypatch.setenv("REASONLM_DEBUG", "1")
    with pytest.raises(type(error)):
        cli.main(["export", "run"])


# --- item 9: an adapter for another base ----------------------------------------------------------
@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Base A (the adapter's), B (wider layers), C (A's layer shapes, another vocabulary: before
    the check the adapter loaded on it and decoded garbage) and a LoRA adapter of A (with its
    tokenizer, as training saves it)."""
    from peft import LoraConfig, get_peft_model
    from reasonlm.model import build_tiny, load_model, train_tokenizer
    from tests.helpers import rows, tiny_model_and_tokenizer
    root = tmp_path_factory.mktemp("bases")
    a, tok = tiny_model_and_tokenizer()
    b, _ = tiny_model_and_tokenizer(hidden=64)
    other = train_tokenizer([r["question"][::-1] + " apple banana cherry" for r in rows(300, seed=7)], vocab_size=300)
    c = build_tiny(other, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position=256)
    for name, model, t in (("A", a, tok), ("B", b, tok), ("C", c, other)):
        model.save_pretrained(root / name)
        t.save_pretrained(root / name)
    peft_model = get_peft_model(load_model(str(root / "A")), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(root / "adapter")
    tok.save_pretrained(root / "adapter")
    return {k: str(root / k) for k in ("A", "B", "C", "adapter")}


def test_an_adapter_loads_on_its_own_base(bases):
    from reasonlm.model import load_adapter
    model, _ = load_adapter(bases["A"], bases["adapter"])
    assert any("lora_A" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("base, problem", [
    ("B", "model.layers.0.self_attn.q_proj is (64, 64) in the base, but the adapter's "
          "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight is (2, 32)"),
    ("C", "its tokenizer has another vocabulary"),
])
def test_an_adapter_for_another_base_is_one_line_naming_both(bases, base, problem):
    from reasonlm.model import ModelError, load_adapter
    with pytest.raises(ModelError) as e:
        load_adapter(bases[base], bases["adapter"])
    assert str(e.value).startswith(f"adapter {bases['adapter']} was trained for base {bases['A']}, "
                                   f"not {bases[base]}: ")
    assert problem in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("base", ["B", "C"])
def test_chat_and_export_refuse_an_adapter_for_another_base(bases, capsys, tmp_path, base):
    fails_with_one_line(capsys, ["chat", "--model", bases[base], "--adapter", bases["adapter"], "-p", "1+1"],
                        f"was trained for base {bases['A']}, not {bases[base]}")
    adapter = tmp_path / "moved"  # an adapter whose recorded base is now another model
    import shutil
    shutil.copytree(bases["adapter"], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(config | {"base_model_name_or_path": bases[base]}))
    fails_with_one_line(capsys, ["export", str(adapter), "--merge", "--out", str(tmp_path / "merged")],
                        f"adapter {adapter} does not fit {bases[base]}, the base it records")
    assert not (tmp_path / "merged").exists()


# --- item 8 (training side): rows longer than seq_len are dropped and counted -----------------------
def test_training_rows_longer_than_seq_len_are_counted_in_train_stats(tmp_path, capsys):
    from reasonlm import data, train
    from reasonlm.answer import encode_example
    from reasonlm.config import DataConfig, Recipe, TrainConfig
    from reasonlm.example import Example, read_dataset, render_target
    from tests.helpers import TINY_TASK, tiny_model_and_tokenizer
    data.run(Recipe(out_dir=str(tmp_path), data=DataConfig(
        tasks=[{"name": "arithmetic", "args": TINY_TASK}], train_steps=[1, 4], ood_steps=[5, 5],
        n_train=120, n_validation=8, n_test_per_steps=2, n_base=10, workers=1)))
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    seq_len = 44
    rows = read_dataset(str(tmp_path / "data"))["train"]
    lengths = [sum(map(len, encode_example(tok, r["question"], render_target(Example.from_row(r), "cot")))) for r in rows]
    longer = sum(n > seq_len for n in lengths)
    assert 0 < longer < len(rows)  # the case exists and leaves something to train on
    cfg = TrainConfig(model=str(tmp_path / "base"), data=str(tmp_path / "data"), steps=2, batch_tokens=2 * seq_len,
                      seq_len=seq_len, warmup_steps=1, eval_every=0, eval_samples=0, log_every=0, save_every=0,
                      lora_r=2, lora_alpha=4)
    train.run(Recipe(out_dir=str(tmp_path), threads=1, train=cfg), "train")
    stats = json.loads((tmp_path / "train" / "train_stats.json").read_text())
    assert stats["too_long"]["train"] == longer
    assert f"dropped {longer} of {len(rows)} examples longer than seq_len={seq_len}" in capsys.readouterr().out


# --- issue 30 -----------------------------------------------------------------------------------
def alias_bomb(indent: str, levels: int = 6) -> str:
    """YAML lines (at `indent`) of aliases of aliases: 10**levels values once copied out."""
    lines = [f"{indent}l0: &l0 [lol]"]
    lines += [f"{indent}l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [
    "eval:\n  thresholds:\n" + alias_bomb("    "),  # nested inside a section's mapping (ran past 120 s at 2.3 GB)
    "data:\n  tasks:\n  - name: arithmetic\n    args:\n" + alias_bomb("      "),
    alias_bomb(""),  # at the top level
    "eval:\n  thresholds: &a {x: [*a]}\n",  # a mapping that contains itself
])
@pytest.mark.parametrize("command", ["config", "pipeline"])
def test_a_yaml_alias_bomb_anywhere_in_a_recipe_is_one_line_at_load_time(tmp_path, capsys, text, command):
    """Fault 7: aliases of aliases parse into a small graph that copying the settings would expand
    without end; the loader counts the expanded values first and refuses past 100,000."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    fails_with_one_line(capsys, [command, str(recipe), f"out_dir={tmp_path / 'out'}"],
                        f"{recipe}: the YAML expands through its aliases (*name) to ")
    assert not (tmp_path / "out").exists()


def test_a_yaml_alias_bomb_in_a_suite_or_an_override_is_one_line(tmp_path, capsys):
    suite = tmp_path / "s.yaml"
    suite.write_text("sources: [{task: arithmetic, steps: [2, 3], n_per_steps: 2}]\nthresholds:\n" + alias_bomb("  "))
    fails_with_one_line(capsys, ["eval", str(suite), "--model", str(tmp_path / "m")],
                        f"{suite}: the YAML expands through its aliases (*name) to 2,345,699 values")
    bomb = "{" + alias_bomb("").strip().replace("\n", ", ") + "}"
    fails_with_one_line(capsys, ["config", "recipes/tiny-cpu.yaml", f"eval.thresholds={bomb}"],
                        "override 'eval.thresholds=", "expands through its aliases")
    assert load_recipe(None, ["eval.thresholds={a: &x 0.5, b: *x}"]).eval.thresholds == {"a": 0.5, "b": 0.5}


# --- issue 30, fault 10: one-liners ----------------------------------------------------------------
@pytest.mark.parametrize("content", [b"[]", b'"x"', b"{}", b'{"provenance": 3}', b"{not json", b"\xff"])
def test_data_stats_on_a_stats_json_that_is_not_the_cards_is_one_line(tmp_path, capsys, content):
    (tmp_path / "stats.json").write_bytes(content)
    fails_with_one_line(capsys, ["data", "--stats", str(tmp_path)],
                        f"{tmp_path / 'stats.json'}: not the statistics `reasonlm data` writes")


@pytest.mark.parametrize("suffix,content,line,message", [
    (".jsonl", b'{"question": "1+1", "answer": "2"}\n{"question": "caf\xe9", "answer": "1"}\n', 2, "not UTF-8 text"),
    (".csv", b'question,answer\n1+1,2\ncaf\xe9,1\n', 3, "not UTF-8 text"),
    (".jsonl", b'{"question": "1+1", "answer": "2"}\n{"question": "x\\ud800", "answer": "1"}\n', 2,
     "not Unicode text (a lone surrogate '\\ud800' at character 2)"),
])
def test_text_that_is_not_unicode_through_file_and_records_names_file_and_line(tmp_path, suffix, content, line,
                                                                                message):
    from reasonlm.tasks.records import Records
    path = tmp_path / f"mine{suffix}"
    path.write_bytes(content)
    for load in (lambda: Records(path=str(path)).load(), lambda: load_sources(EvalConfig(sources=[{"file": str(path)}]))):
        with pytest.raises(ValueError) as e:
            load()
        assert str(e.value).endswith(f"{path}:{line}: {message}"), str(e.value)
    if suffix == ".jsonl":  # the jsonl: kind reads the same way
        with pytest.raises(ValueError, match=f"^{path}:{line}: "):
            load_sources(EvalConfig(sources=[{"jsonl": str(path)}]))


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", "", "no records in it"),
    ("header-only.csv", "question,answer\n", "no records in it"),
    ("twice.csv", "question,answer,answer\n1+1,2,3\n", ":1: column 'answer' appears twice in the header"),
])
def test_an_empty_import_file_or_a_header_naming_a_column_twice_is_one_line(tmp_path, name, content, message):
    from reasonlm import data
    from tests.data_helpers import TINY, build
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=f"{path}{message}" if message.startswith(":") else f"{path}: {message}"):
        load_sources(EvalConfig(sources=[{"file": str(path)}]))
    with pytest.raises(data.DataError, match=message):  # not an empty (or last-column) split
        build(tmp_path, tasks=[{"name": "arithmetic", "args": TINY}, {"name": "records", "args": {"path": str(path)}}])
    assert not (tmp_path / "run" / "data").exists()


def test_a_10000_digit_gold_answer_gives_a_short_error_line(tmp_path):
    cfg, path = jsonl_suite(tmp_path, [GOOD, {"question": "1+1", "answer": "9" * 10_000}])
    with pytest.raises(ValueError) as e:
        load_sources(cfg)
    assert str(e.value).startswith(f"{path}:2: the gold answer '9999") and "(10,000 characters)" in str(e.value)
    assert len(str(e.value)) < 200 + len(str(path))


def test_jsonl_refuses_a_negative_n_steps_like_file_does(tmp_path):
    from reasonlm.tasks.records import Records
    cfg, path = jsonl_suite(tmp_path, [GOOD, {"question": "1+1", "answer": "2", "n_steps": -5}])
    with pytest.raises(ValueError, match=f"^{path}:2: n_steps must be >= 0, got -5$"):
        load_sources(cfg)
    with pytest.raises(ValueError, match=f"{path}:2: malformed record: n_steps must be >= 0, got -5$"):
        Records(path=str(path), on_error="raise").load()
    cfg, _ = jsonl_suite(tmp_path, [{"question": "1+2", "answer": "3", "steps": ["1+2=3"], "n_steps": "1"}])
    assert load_sources(cfg)[0][0].examples[0].n_steps == 1
