"""The docs say what the code does: every relative link resolves, the README stays short, its
quick-start commands are the ones CI runs, and the worked task family of docs/data.md works
through the task protocol and the data stage exactly as printed."""
import importlib.util
import json
import math
import os
import random
import re
import shlex

import pytest

from reasonlm.answer import render_completion
from reasonlm.config import DataConfig, Recipe
from reasonlm.verdict import judge
from reasonlm.example import Example, read_dataset
from reasonlm.tasks import TASKS, get_task, parse_any_question
from tests.helpers import ROOT

DOCS = [os.path.join(ROOT, "README.md")] + sorted(
    os.path.join(ROOT, "docs", name) for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md"))
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE_RE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def relative_links(path):
    """(target, anchor) of every link that is not a URL, outside code blocks."""
    text = FENCE_RE.sub("", read(path))
    for target in LINK_RE.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        yield file, anchor


def anchors(path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.*)$", FENCE_RE.sub("", read(path)), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(doc):
    links = list(relative_links(doc))
    for file, anchor in links:
        target = os.path.normpath(os.path.join(os.path.dirname(doc), file)) if file else doc
        assert os.path.exists(target), f"{os.path.relpath(doc, ROOT)} links to {file}, which does not exist"
        if anchor and target.endswith(".md"):
            assert anchor in anchors(target), f"{os.path.relpath(doc, ROOT)}: no heading #{anchor} in {file or 'itself'}"


def test_every_doc_is_linked_from_the_readme_or_another_doc():
    linked = set()
    for doc in DOCS:
        for file, _ in relative_links(doc):
            if file:
                linked.add(os.path.normpath(os.path.join(os.path.dirname(doc), file)))
    orphans = [os.path.relpath(d, ROOT) for d in DOCS[1:] if d not in linked]
    assert not orphans, f"not linked from anywhere: {orphans}"


def test_readme_is_short():
    lines = read(os.path.join(ROOT, "README.md")).count("\n")
    assert lines <= 220, f"README.md has {lines} lines; move detail into docs/"


def quick_start_commands():
    """The two commands of the README's quick start (the first bash block under '## Quick start')."""
    readme = read(os.path.join(ROOT, "README.md"))
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = next(body for lang, body in FENCE_RE.findall(section) if lang == "bash")
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 2, commands
    return [[shlex.split(part) for part in command.split(" && ")] for command in commands]


def ci_test_command():
    """The first command of .ci/run that runs pytest, as its && parts (pip's -q dropped: CI is quiet)."""
    line = next(line for line in read(os.path.join(ROOT, ".ci", "run")).splitlines()
                if "pytest" in line and not line.lstrip().startswith("#"))
    return [[word for word in shlex.split(part) if word != "-q"] for part in line.split(" && ")]


def test_readme_test_command_is_what_ci_runs():
    _, tests = quick_start_commands()
    ci = ci_test_command()
    assert tests == ci, f"README command 2 {tests} differs from .ci/run {ci}"
    assert tests[-1][:3] == ["python", "-m", "pytest"]


def test_readme_commands_install_the_same_way_and_run_the_default_recipe():
    run, tests = quick_start_commands()
    assert run[:2] == tests[:2]  # the same venv
    install, dev_install = run[2], tests[2]
    # the same, plus the dev extra; the run pins the versions behind the README's results
    assert install[3:5] == ["-c", "constraints.txt"] and os.path.exists(os.path.join(ROOT, "constraints.txt"))
    assert [".[dev]" if word == "." else word for word in install[:3] + install[5:]] == dev_install
    assert run[3] == ["reasonlm", "pipeline", "recipes/tiny-cpu.yaml"]
    assert os.path.exists(os.path.join(ROOT, run[3][2]))
    # tests/test_pipeline.py runs that very recipe, so the quick start's numbers are checked in CI
    assert '"recipes", "tiny-cpu.yaml"' in read(os.path.join(ROOT, "tests", "test_pipeline.py"))


# --- docs/data.md's worked family, run as printed ---------------------------------------------
@pytest.fixture
def digit_sum(tmp_path):
    """The code block of docs/data.md that starts '# reasonlm/tasks/digit_sum.py', imported and
    registered the way the page says (one line in TASKS)."""
    blocks = [body for lang, body in FENCE_RE.findall(read(os.path.join(ROOT, "docs", "data.md")))
              if lang == "python" and body.startswith("# reasonlm/tasks/digit_sum.py")]
    assert len(blocks) == 1
    path = tmp_path / "digit_sum.py"
    path.write_text(blocks[0])
    assert len(blocks[0].splitlines()) <= 50  # "a worked example": short enough to read
    spec = importlib.util.spec_from_file_location("digit_sum", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    original = dict(TASKS)  # registered before word_problems, as the page says (/verify's order)
    registered = {}
    for name, cls in original.items():
        if name == "word_problems":
            registered["digit_sum"] = module.DigitSum
        registered[name] = cls
    TASKS.clear()
    TASKS.update(registered)
    yield module
    TASKS.clear()
    TASKS.update(original)


def test_worked_family_follows_the_task_protocol(digit_sum):
    task = get_task("digit_sum")
    ex = task.generate(random.Random(0), 3)
    assert ex.n_steps == len(ex.steps) == 3 and ex.family == "digit_sum"
    assert len(ex.meta["number"]) == 4
    assert int(ex.answer) == sum(map(int, ex.meta["number"]))
    assert Example.from_row(json.loads(json.dumps(ex.to_row()))) == ex
    for n in range(1, 9):
        gold = task.generate(random.Random(n), n)
        check = task.check(gold, gold.steps, gold.answer)
        assert check.chain_valid and check.step_ok == [True] * n
        assert judge(task, gold, render_completion(gold.steps, gold.answer)).check.accepted
    assert task.generate(random.Random(7), 5) == task.generate(random.Random(7), 5)


def test_worked_family_catches_a_wrong_step_where_it_is(digit_sum):
    task = get_task("digit_sum")
    ex = digit_sum.solve("4729")
    assert ex.steps == ("4+7=11", "11+2=13", "13+9=22") and ex.answer == "22"
    wrong = ["4+7=11", "11+2=14", "14+9=23"]
    check = task.check(ex, wrong, "22")
    assert check.first_bad_step == 2 and check.answer_correct and not check.chain_valid
    whole = judge(task, ex, render_completion(wrong, "22")).check  # the completion as text, parsed
    assert whole.answer_correct and not whole.accepted and whole.first_bad_step == 2
    assert not task.check(ex, ex.steps, "23").answer_correct
    assert not task.check(ex, ex.steps[:2], "22").chain_valid  # a step short
    assert task.check(ex, ["4 + 7 = 11", "11+2=13", "13+9=22"], "22").chain_valid  # spaces are fine


def test_worked_family_reads_a_typed_question(digit_sum):
    task, ex = parse_any_question("What is the sum of the digits of 4729?")
    assert task.name == "digit_sum" and ex.answer == "22"
    assert get_task("digit_sum").parse_question("What is 4 + 7?") is None


def test_worked_family_runs_through_the_data_stage(digit_sum, tmp_path):
    from reasonlm import data  # the data stage (imports datasets): only this test needs it

    cfg = DataConfig(tasks=[{"name": "digit_sum", "weight": 1.0, "args": {}}], n_train=60, n_validation=10,
                     n_test_per_steps=5, n_base=20, workers=1)
    out = data.run(Recipe(out_dir=str(tmp_path / "data"), data=cfg))
    dataset = read_dataset(out)
    assert len(dataset["train"]) == 60
    assert set(dataset["train"]["family"]) == {"digit_sum"}
    assert set(dataset["test_ood"]["n_steps"]) == {7, 8}
    row = dataset["test"][0]
    ex = Example.from_row(row)
    assert get_task("digit_sum").check(ex, ex.steps, ex.answer).chain_valid


# --- docs/examples/clock.py: a family in a file outside the package, through data and eval ------
CLOCK = os.path.join(ROOT, "docs", "examples", "clock.py")


@pytest.fixture
def clock():
    """The worked plugin family, loaded the way a recipe's task_files loads it (and unloaded after)."""
    from reasonlm.tasks import load_plugins
    from tests.helpers import plugin_registry

    with plugin_registry():
        assert load_plugins([CLOCK]) == ["clock"]
        yield get_task("clock")


def test_plugin_example_is_about_a_page_and_follows_the_protocol(clock):
    assert len(read(CLOCK).splitlines()) <= 70
    for n in range(1, 11):
        gold = clock.generate(random.Random(n), n)
        assert gold.n_steps == len(gold.steps) == n and clock.check(gold, gold.steps, gold.answer).chain_valid
        wrong = list(gold.steps)
        wrong[n // 2] = wrong[n // 2].replace("=", "=1", 1)
        assert clock.check(gold, wrong, gold.answer).first_bad_step == n // 2 + 1
    task, ex = parse_any_question("A clock shows 11. What does it show after +3h -5h?")
    assert task.name == "clock" and ex.steps == ("11+3=14-12=2 | -5h", "2-5=-3+12=9") and ex.answer == "9"


def test_plugin_recipe_names_the_example_and_it_runs_through_data_and_eval(clock, tmp_path, capsys):
    """recipes/tiny-cpu-plugin.yaml's family through the data stage, then a suite that names the same
    file through `reasonlm eval` on a toy model: the report has step metrics for it."""
    from reasonlm import cli, data
    from reasonlm.config import load_recipe
    from tests.helpers import tiny_model_and_tokenizer

    recipe = load_recipe(os.path.join(ROOT, "recipes", "tiny-cpu-plugin.yaml"),
                         ["data.n_train=40", "data.n_validation=8", "data.n_test_per_steps=2", "data.n_base=10",
                          "data.workers=1", f"out_dir={tmp_path}"])
    assert recipe.task_files == [CLOCK] and recipe.data.tasks[0]["name"] == "clock"
    out = data.run(recipe)
    dataset = read_dataset(out)
    assert set(dataset["train"]["family"]) == {"clock"}
    assert "docs/examples/clock.py" in read(os.path.join(out, "README.md"))  # the card names the file
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(tmp_path / "toy")
    tok.save_pretrained(tmp_path / "toy")
    suite = tmp_path / "clock-suite.yaml"
    suite.write_text(f"task_files: [{os.path.relpath(CLOCK, tmp_path)}]\n"
                     "sources: [{task: clock, steps: [2, 3], n_per_steps: 3}]\nmax_new_tokens: 16\n")
    cli.main(["eval", str(suite), "--model", str(tmp_path / "toy"), "--adapter", "none", "--out", str(tmp_path / "ev")])
    with open(tmp_path / "ev" / "report.json") as f:
        report = json.load(f)
    assert list(report["sources"]) == ["clock"] and report["overall"]["n"] == 6 and report["overall"]["steps_checkable"]
    # the untrained toy writes no steps; eval's scorer gives step metrics to the family's own answers
    from reasonlm.evaluate.scoring import score

    ex = Example.from_row(dataset["test"][0])
    wrong = [ex.steps[0].replace("=", "=1", 1), *ex.steps[1:]]
    assert score(ex, render_completion(ex.steps, ex.answer))["chain_valid"]
    got = score(ex, render_completion(wrong, ex.answer))
    assert (got["steps_total"], got["steps_ok"], got["first_bad_step"]) == (len(ex.steps), len(ex.steps) - 1, 1)


# --- docs/use-elsewhere.md: the JSONL views in TRL -------------------------------------------
@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from reasonlm import data  # the data stage (imports datasets): only these tests need it

    cfg = DataConfig(n_train=40, n_validation=8, n_test_per_steps=2, n_base=8, workers=1)
    return data.run(Recipe(out_dir=str(tmp_path_factory.mktemp("views") / "data"), data=cfg))


@pytest.mark.slow  # ~30 s, most of it importing TRL
def test_trl_sft_trainer_trains_on_the_prompt_completion_view(small_dataset, tmp_path):
    """docs/use-elsewhere.md's TRL snippet: SFTTrainer reads train.prompt_completion.jsonl as it is and
    puts its loss on the tokens reasonlm's own training does (completion + end of turn), plus one newline."""
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from reasonlm.answer import encode_example
    from reasonlm.model import build_tiny, train_tokenizer

    rows = [json.loads(line) for line in open(os.path.join(small_dataset, "jsonl", "train.prompt_completion.jsonl"))]
    tok = train_tokenizer(["user assistant"] + [r["prompt"][0]["content"] + r["completion"][0]["content"] for r in rows])
    model = build_tiny(tok, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    # the snippet in the doc, with a tiny model and two steps
    dataset = load_dataset("json", data_files=os.path.join(small_dataset, "jsonl", "train.prompt_completion.jsonl"),
                           split="train")
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=dataset,
                         args=SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                                        use_cpu=True, bf16=False, report_to=[], save_strategy="no", disable_tqdm=True),
                         peft_config=LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    first = trainer.train_dataset[0]
    prompt, completion = encode_example(tok, rows[0]["prompt"][0]["content"], rows[0]["completion"][0]["content"])
    ids, labels = first["input_ids"], first["labels"]  # labels: -100 where no loss is taken
    # TRL renders the whole conversation, so it also trains the newline the chat template writes
    # after the end-of-turn token: one token more than reasonlm, after the point where generation stops
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert ids == prompt + completion + newline
    assert labels == [-100] * len(prompt) + completion + newline
    # two steps from a random init (LoRA's B starts at zero): TRL's loss is the cross-entropy of a
    # near-uniform model over the labelled tokens, ln(vocabulary), not a sum and not over no tokens
    assert trainer.train().training_loss == pytest.approx(math.log(len(tok)), abs=0.5)


def test_every_docs_path_named_in_the_code_exists():
    """Recipes, modules and tests point readers at docs/*.md (e.g. the real-model recipes at
    docs/real-models.md): every such path must be there."""
    named = set()
    for folder in ("reasonlm", "recipes", "tests", "eval", ".ci"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith((".py", ".yaml", ".yml", ".md")) or folder == ".ci":
                    named.update(re.findall(r"\bdocs/[\w./-]+\.(?:md|png)", read(os.path.join(dirpath, name))))
    assert "docs/real-models.md" in named
    missing = sorted(path for path in named if not os.path.exists(os.path.join(ROOT, path)))
    assert not missing, f"named in the code but not in the repository: {missing}"
