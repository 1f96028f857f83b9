"""Never lose a user's files (issue 17, items 1-4): a stage replaces only a folder it wrote, one run
per output folder, and a full disk is one line with no temporary left and no mix of old and new
files. Each case runs through the CLI or the stage's public function."""
import errno
import os
import subprocess
import sys

import pytest

from reasonlm import cli, outputs
from reasonlm.config import EvalConfig
from reasonlm.data.writer import SplitWriter
from reasonlm.evaluate import write_outputs
from tests.eval_helpers import toy_dir, write_suite  # noqa: F401 (fixtures)
from tests.helpers import ROOT

RECIPE = os.path.join(ROOT, "recipes", "tiny-cpu.yaml")
SMALL_DATA = ["data.n_train=60", "data.n_base=20", "data.n_validation=10", "data.n_test_per_steps=2",
              "data.workers=1"]


def run_cli(capsys, *argv) -> tuple[int, str]:
    """(exit code, stderr) of `reasonlm ARGV` run in this process."""
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def one_line_error(err: str) -> str:
    """The one error line (progress bars of model loading may precede it)."""
    errors = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err and err.rstrip().endswith(errors[0]), err
    return errors[0]


def tree(root) -> dict:
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}


def disk_full_after(n_writes: int):
    """An `open` whose files accept `n_writes` writes in all, then fail as a full disk does."""
    count = {"n": 0}

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            count["n"] += 1
            if count["n"] > n_writes:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()
            return False

        def __getattr__(self, name):
            return getattr(self.f, name)

    return lambda *a, **k: Full(open(*a, **k))


# --- the rules, on their own -----------------------------------------------------------------
def test_only_a_folder_the_same_stage_wrote_is_replaced(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    with pytest.raises(outputs.OutputError, match="was not written by reasonlm"):
        outputs.check_replaceable(str(mine), "export")
    assert (mine / "thesis.txt").read_text() == "x"
    for _ in range(2):  # a marked folder: its own stage replaces it, another stage does not
        tmp = outputs.fresh_temporary(str(tmp_path / "out"), "data")
        outputs.replace(tmp, str(tmp_path / "out"), "data")
    with pytest.raises(outputs.OutputError, match="written by reasonlm data, so reasonlm export will not"):
        outputs.check_replaceable(str(tmp_path / "out"), "export")
    (tmp_path / "empty").mkdir()
    outputs.check_replaceable(str(tmp_path / "empty"), "export")  # nothing to lose
    (tmp_path / "file").write_text("x")
    with pytest.raises(outputs.OutputError, match="not a directory reasonlm wrote"):
        outputs.check_replaceable(str(tmp_path / "file"), "export")


def test_a_full_disk_is_one_line_and_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    path.write_text("old")
    monkeypatch.setattr(outputs, "open", disk_full_after(0), raising=False)
    with pytest.raises(outputs.OutputError) as e:
        outputs.atomic_write(str(path), "new")
    assert str(e.value).startswith("no space left on /") and f"while writing {path}" in str(e.value)
    assert "\n" not in str(e.value)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


# --- item 1: export and the data stage never replace a folder they did not write ---------------
@pytest.fixture(scope="module")
def run_with_adapter(tmp_path_factory, toy):  # noqa: F811
    """out/base (a toy model) and out/train/adapter (a LoRA adapter on it, safetensors)."""
    from reasonlm.config import TrainConfig
    from reasonlm.model import attach_lora, load_model
    out = tmp_path_factory.mktemp("run")
    model, tok = toy
    model.save_pretrained(out / "base")
    tok.save_pretrained(out / "base")
    lora = attach_lora(load_model(str(out / "base")), TrainConfig(lora_r=2, lora_alpha=4))
    lora.save_pretrained(out / "train" / "adapter")
    tok.save_pretrained(out / "train" / "adapter")
    return out


def test_export_never_deletes_a_folder_it_did_not_write(run_with_adapter, tmp_path, capsys):
    mydir = tmp_path / "mydir"
    mydir.mkdir()
    (mydir / "thesis.txt").write_text("four years")
    code, err = run_cli(capsys, "export", str(run_with_adapter / "train"), "--out", str(mydir))
    assert code == 2 and f"{mydir} exists and it was not written by reasonlm" in one_line_error(err)
    assert os.listdir(mydir) == ["thesis.txt"] and (mydir / "thesis.txt").read_text() == "four years"
    assert not (tmp_path / ".mydir.lock").exists()  # issue 30: refused before the lock, no stray lock file
    # its own earlier export is replaced
    out = tmp_path / "exported"
    for _ in range(2):
        assert run_cli(capsys, "export", str(run_with_adapter / "train"), "--out", str(out))[0] == 0
    assert {"adapter_model.safetensors", "adapter_config.json", outputs.MARKER} <= set(os.listdir(out))
    assert outputs.written_by(str(out)) == "reasonlm export"
    assert not os.path.exists(str(out) + ".tmp") and not os.path.exists(str(out) + ".old")


@pytest.mark.parametrize("target", ["base", "train/adapter", "."])
def test_export_never_writes_over_the_adapter_or_its_base(run_with_adapter, capsys, target):
    before = tree(run_with_adapter)
    out = os.path.normpath(run_with_adapter / target)
    code, err = run_cli(capsys, "export", str(run_with_adapter / "train"), "--merge", "--out", out)
    assert code == 2 and "would write over" in one_line_error(err)
    assert tree(run_with_adapter) == before


def test_the_data_stage_never_deletes_a_foreign_data_folder(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "my_labels.csv").write_text("a,b\n")
    code, err = run_cli(capsys, "data", RECIPE, f"out_dir={tmp_path}", *SMALL_DATA)
    assert code == 2 and f"{data} exists and it was not written by reasonlm" in one_line_error(err)
    assert os.listdir(data) == ["my_labels.csv"] and not (tmp_path / "data.tmp").exists()
    # an empty folder holds nothing to lose; the stage's own dataset is rebuilt in place
    os.remove(data / "my_labels.csv")
    for _ in range(2):
        assert run_cli(capsys, "data", RECIPE, f"out_dir={tmp_path}", *SMALL_DATA)[0] == 0
    assert outputs.written_by(str(data)) == "reasonlm data"


# --- item 2: counts and sizes are checked before anything runs --------------------------------
@pytest.mark.parametrize("command,override,message", [
    ("data", "data.n_train=-1", "data.n_train must be >= 0, got -1"),
    ("train", "train.steps=0", "train.steps must be >= 1, got 0"),
    ("train", "train.batch_tokens=100", "train.batch_tokens must be >= train.seq_len (192), got 100"),
    ("base", "base.batch_tokens=64", "base.batch_tokens must be >= base.seq_len (192), got 64"),
])
def test_bad_counts_are_one_line_through_the_cli(tmp_path, capsys, command, override, message):
    code, err = run_cli(capsys, command, RECIPE, f"out_dir={tmp_path}", override)
    assert code == 2 and one_line_error(err) == f"error: {message}"
    assert os.listdir(tmp_path) == []


# --- item 3: one run per output folder --------------------------------------------------------
def test_a_second_eval_into_a_busy_folder_stops_naming_the_holder(toy_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from reasonlm import outputs\n"
         f"with outputs.lock({str(out)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert holder.stdout.readline().strip() == "held"
        suite = write_suite(tmp_path / "s.yaml")
        code, err = run_cli(capsys, "eval", suite, "--model", toy_dir, "--out", str(out))
        assert code == 2
        assert one_line_error(err) == (f"error: {out} is in use by another reasonlm run (PID {holder.pid}); "
                                       f"wait for it to finish or choose another output directory")
        assert not out.exists() or os.listdir(out) == []
    finally:
        holder.communicate("")
    # the lock died with its holder: the same command now runs
    assert run_cli(capsys, "eval", suite, "--model", toy_dir, "--out", str(out))[0] == 0
    assert (out / "report.json").exists()


# --- item 4: a full disk ----------------------------------------------------------------------
def test_a_full_disk_in_the_data_stage_is_one_line_and_keeps_the_old_dataset(tmp_path, capsys, monkeypatch):
    assert run_cli(capsys, "data", RECIPE, f"out_dir={tmp_path}", *SMALL_DATA)[0] == 0
    before = tree(tmp_path / "data")

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SplitWriter, "_close_shard", full)
    code, err = run_cli(capsys, "data", RECIPE, f"out_dir={tmp_path}", *SMALL_DATA, "data.seed=1")
    line = one_line_error(err)
    assert code == 2 and line.startswith("error: no space left on /") and f"while writing {tmp_path / 'data'};" in line
    assert tree(tmp_path / "data") == before
    assert sorted(os.listdir(tmp_path)) == [".data.lock", "data"]


def test_a_full_disk_while_writing_eval_outputs_leaves_the_old_set_whole(tmp_path, monkeypatch):
    from tests.eval_helpers import fake_report
    _, report = fake_report(tmp_path, "old", [1, 0, 1])
    out = tmp_path / "eval"
    write_outputs(str(out), report, [{"id": "a"}], EvalConfig(samples=1))
    before = tree(out)
    monkeypatch.setattr(outputs, "open", disk_full_after(1), raising=False)  # the second file fails
    with pytest.raises(outputs.OutputError, match=r"^no space left on .* while writing "):
        write_outputs(str(out), {**report, "accuracy": 0.1}, [{"id": "b"}], EvalConfig(samples=2))
    assert tree(out) == before  # no .tmp, and no config.yaml or samples of the new run beside the old report


# --- issue 30, fault 4: two RL runs on one folder ------------------------------------------------
def test_a_second_rl_run_on_a_busy_folder_stops_naming_the_holder(tmp_path, capsys):
    """`reasonlm rl` takes the per-output lock train and eval take: a second run on the same
    out_dir stops in one line before it loads a model or writes into rl/."""
    import yaml
    from reasonlm.config import TrainConfig
    from reasonlm.model import attach_lora
    from tests.helpers import TINY_RECIPE, tiny_model_and_tokenizer
    out = tmp_path / "run"
    model, tok = tiny_model_and_tokenizer()
    model.save_pretrained(out / "base")
    tok.save_pretrained(out / "base")
    attach_lora(model, TrainConfig(lora_r=4)).save_pretrained(out / "train" / "adapter")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "out_dir": str(out),
                                      "rl": {"rounds": 1, "n_steps": [1, 3], "preflight_problems": 2}}))
    rl_dir = out / "rl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from reasonlm import outputs\n"
         f"with outputs.lock({str(rl_dir)!r}):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = run_cli(capsys, "rl", str(recipe))
        assert code == 2
        assert one_line_error(err) == (f"error: {rl_dir} is in use by another reasonlm run (PID {holder.pid}); "
                                       f"wait for it to finish or choose another output directory")
        assert not rl_dir.exists() or os.listdir(rl_dir) == []
        # rl.processes=2: the starting process stops the same way, before writing rl/recipe.yaml
        code, err = run_cli(capsys, "rl", str(recipe), "rl.processes=2")
        assert code == 2 and f"{rl_dir} is in use by another reasonlm run" in one_line_error(err)
        assert not rl_dir.exists() or os.listdir(rl_dir) == []
    finally:
        holder.communicate("")


# --- issue 30, fault 1: a stage's single files go only into a folder that stage marked -------------
def tiny_recipe(tmp_path, out, **settings) -> str:
    import yaml
    from tests.helpers import TINY_RECIPE
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "out_dir": str(out), **settings}))
    return str(recipe)


def plant(folder, files: dict) -> dict:
    """A folder of the user's holding `files` (name -> text); returns its tree."""
    for name, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return tree(folder)


@pytest.mark.parametrize("mine,named", [
    ({"recipe.yaml": "my recipe", "eval/report.md": "# my report", "stages.txt": "notes"}, "{out}/recipe.yaml exists"),
    ({"eval/report.md": "# my report"}, "{out} holds eval"),
])
def test_a_pipeline_into_a_folder_of_the_users_changes_nothing(tmp_path, capsys, mine, named):
    """`reasonlm pipeline RECIPE out_dir=DIR`, DIR holding the user's files: one line naming the
    file, exit 2, nothing written (it once overwrote recipe.yaml, stages.json, eval/report.*, ...)."""
    out = tmp_path / "mine"
    before = plant(out, mine)
    code, err = run_cli(capsys, "pipeline", tiny_recipe(tmp_path, out))
    line = one_line_error(err)
    assert code == 2 and named.format(out=out) in line and f"and {out} was not written by reasonlm" in line, line
    assert tree(out) == before and not [p for p in os.listdir(tmp_path) if p.endswith(".lock")]


@pytest.mark.slow
def test_every_stage_writes_its_files_only_into_a_folder_it_wrote(tmp_path, capsys):
    """Stage by stage on the tiny recipe: a folder of the user's where a stage's run directory goes
    (base-run, train, rl, an eval --out folder, or a model: --out RUN/base, RUN/train/adapter) is one
    line naming the file, exit 2, and stays as it was; the stage's own folders are written and
    written again, and the pipeline takes over a run directory its stages made one by one."""
    out = tmp_path / "run"
    recipe = tiny_recipe(tmp_path, out, rl={"rounds": 1, "n_steps": [1, 3], "prompts_per_round": 2,
                                            "num_generations": 2, "max_completion_length": 16, "preflight_problems": 2})
    assert run_cli(capsys, "data", recipe)[0] == 0
    for i, (stage, folder, name, extra) in enumerate((
            ("base", "base-run", "metrics.jsonl", ()), ("train", "train", "loss.png", ()),
            ("rl", "rl", "completions.jsonl", ()), ("rl", "rl", "config.yaml", ("rl.processes=2",)))):
        mine = out / folder
        if mine.exists():  # the stage's own, from the case before
            os.rename(mine, tmp_path / f"own-{i}")
        before = plant(mine, {name: "mine", "notes/x.txt": "mine"})
        code, err = run_cli(capsys, stage, recipe, *extra)
        line = one_line_error(err)
        assert code == 2 and f"{mine / name} exists and {mine} was not written by reasonlm" in line, line
        assert tree(mine) == before
        os.rename(mine, tmp_path / f"mine-{i}")  # moved away by its owner: the stage runs
        assert run_cli(capsys, stage, recipe, *extra)[0] == 0
        assert outputs.written_by(str(mine)) == f"reasonlm {stage}"
    assert run_cli(capsys, "train", recipe)[0] == 0  # its own run directory, written again
    for target in ("base", "train/adapter", "train", ".", "mine"):  # eval --out into a model, a run, a user's folder
        plant(out / "mine", {"report.md": "# my report"})
        before = tree(out)
        code, err = run_cli(capsys, "eval", recipe, "--out", os.path.normpath(out / target))
        line = one_line_error(err)
        assert code == 2 and "so reasonlm eval will not write into it" in line, line
        assert tree(out) == before
    assert "config.yaml exists and" in run_cli(capsys, "eval", recipe, "--out", str(out / "base"))[1]
    os.rename(out / "mine", tmp_path / "mine")
    for _ in range(2):
        assert run_cli(capsys, "eval", recipe)[0] == 0
    assert outputs.written_by(str(out / "eval")) == "reasonlm eval"
    assert run_cli(capsys, "pipeline", recipe)[0] == 0
    assert outputs.written_by(str(out)) == "reasonlm pipeline"
