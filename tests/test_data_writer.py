"""data/writer.py: the JSONL views are byte for byte what json.dumps writes."""
import json

from reasonlm.data.writer import SplitStats, SplitWriter
from reasonlm.example import Example
from tests.data_helpers import cfg


def test_chat_views_are_json_dumps_of_the_messages(tmp_path):
    """The views encode the question and completion strings into a fixed frame: byte-identical
    to json.dumps of the whole messages, whatever the text holds."""
    from reasonlm.answer import prompt_messages, render_completion
    writer = SplitWriter(str(tmp_path), "train", cfg(), SplitStats(None, 1), "fp")
    questions = ["(7+5)*3-4", 'Ünïcode "quotes" \\ back\nslash\t\x00 \u2028', "emoji 😀 </s> {}", ""]
    for q in questions:
        writer.add(Example(question=q, answer="2", steps=("1+1=2", 'a "b"'), n_steps=2, family="x"))
    for f in writer.views:
        f.close()
    chat = (tmp_path / "jsonl/train.chat.jsonl").read_text(encoding="utf-8").splitlines()
    pc = (tmp_path / "jsonl/train.prompt_completion.jsonl").read_text(encoding="utf-8").splitlines()
    for q, chat_line, pc_line in zip(questions, chat, pc, strict=True):
        reply = [{"role": "assistant", "content": render_completion(["1+1=2", 'a "b"'], "2")}]
        assert chat_line == json.dumps({"messages": prompt_messages(q) + reply})
        assert pc_line == json.dumps({"prompt": prompt_messages(q), "completion": reply})


def test_arrow_shard_is_byte_identical_to_datasets_save_to_disk(tmp_path):
    """The arrow shards are written with pyarrow's public stream writer (no private datasets
    module): the file must be byte for byte the one `Dataset.save_to_disk` writes for the same
    rows, record batches included (2,500 rows = three batches)."""
    import datasets
    from reasonlm.data.writer import COLUMNS, features
    writer = SplitWriter(str(tmp_path / "ours"), "train", cfg(shard_rows=10_000), SplitStats(None, 1), "fp")
    examples = [Example(question=f"{i}+{i}", answer=str(2 * i), steps=(f"{i}+{i}={2 * i}",), n_steps=1,
                        family="arithmetic") for i in range(2500)]
    for e in examples:
        writer.add(e)
    writer.close({}, "{}")
    rows = [dict(e.to_row(), id=f"train-{i:07d}") for i, e in enumerate(examples)]
    reference = datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in COLUMNS}, features=features())
    reference.save_to_disk(str(tmp_path / "theirs"), max_shard_size=1 << 40)
    ours = (tmp_path / "ours/train/data-00000-of-00001.arrow").read_bytes()
    theirs = (tmp_path / "theirs/data-00000-of-00001.arrow").read_bytes()
    assert ours == theirs
    assert datasets.Dataset.from_file(str(tmp_path / "ours/train/data-00000-of-00001.arrow"))[2499]["question"] == "2499+2499"
