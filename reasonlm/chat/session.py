"""A chat session saved and loaded as chat-messages JSONL ({"messages": [...]}, the SFT data format)."""
from __future__ import annotations

import json

from reasonlm.example import text_lines
from reasonlm.outputs import atomic_write


def save_session(path: str, system: str, history: list[dict]):
    """One line of chat-messages JSONL ({"messages": [...]}), the SFT data format; atomic (a path
    that cannot be written is one OutputError naming it)."""
    messages = ([{"role": "system", "content": system}] if system else []) + history
    atomic_write(path, json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return len(messages)


def load_session(path: str) -> tuple[str, list[dict]]:
    """(system, history) from the last conversation in a chat-messages JSONL file."""
    try:
        lines = [ln for _, ln in text_lines(path) if ln.strip()]  # not UTF-8: one error naming path:line
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    if not lines:
        raise ValueError(f"{path} is empty")
    try:
        record = json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{len(lines)}: not valid JSON ({e.msg})") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ValueError(f'{path}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    roles = [m["role"] for m in messages]
    if roles != ["user", "assistant"] * (len(roles) // 2):
        raise ValueError(f"{path}: expected alternating user/assistant messages after an optional system one")
    return system, [{"role": m["role"], "content": m["content"]} for m in messages]
