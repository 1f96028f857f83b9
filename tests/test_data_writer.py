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
