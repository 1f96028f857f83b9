"""The chat REPL, driven in a real pseudo-terminal, plus its parts in-process.

Two toy models are saved to a tmp dir once: `trained`, fine-tuned for a few seconds so it writes
'a+b=c' lines and a '#### N' line, then stops; and `endless`, an untrained toy whose end-of-turn
embedding is zero (so greedy decoding never picks it) with a huge context, for Ctrl-C tests.
"""
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pexpect
import pytest
import torch
import torch.nn.functional as F

from reasonlm import chat
from reasonlm.chat import display, session
from reasonlm.answer import encode_example, render_completion
from reasonlm.detokenizer import Detokenizer
from reasonlm.engine import SamplingParams, engine_for
from tests.helpers import ROOT, ScriptedEngine, rows, tiny_model_and_tokenizer

ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
PROMPT = "you>"
QUESTION = "3+4-2"


def finetune(model, tok, steps=250, batch=32):
    """A few seconds of plain SFT: enough for the answer format, not for arithmetic."""
    examples = []
    for r in rows(2000, steps=(1, 3), seed=1):
        p, c = encode_example(tok, r["question"], render_completion(r["steps"], r["answer"]))
        examples.append((p + c, [-100] * len(p) + c))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        chunk = examples[step * batch % len(examples):][:batch]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in chunk])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk])
        logits = model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_models")
    torch.manual_seed(0)
    model, tok = tiny_model_and_tokenizer(hidden=64, layers=2, heads=4)
    finetune(model, tok)
    model.save_pretrained(root / "trained")
    tok.save_pretrained(root / "trained")
    endless, tok2 = tiny_model_and_tokenizer()
    with torch.no_grad():  # tied embeddings: a zero row gives the end-of-turn token logit 0, never the max
        endless.get_input_embeddings().weight[tok2.convert_tokens_to_ids("<|im_end|>")] = 0
    endless.config.max_position_embeddings = 1_000_000
    endless.save_pretrained(root / "endless")
    tok2.save_pretrained(root / "endless")
    return {"trained": str(root / "trained"), "endless": str(root / "endless"), "root": root}


def spawn(*args, preexec_fn=None):
    child = pexpect.spawn(sys.executable, ["-m", "reasonlm", "chat", *args], env=ENV, cwd=ROOT,
                          encoding="utf-8", timeout=30, dimensions=(50, 200), preexec_fn=preexec_fn)
    child.expect(PROMPT)
    return child


def send(child, line):
    """Type a line at the prompt (after a beat, so readline has set up the terminal)."""
    time.sleep(0.1)
    child.sendline(line)


def run(*args):
    return subprocess.run([sys.executable, "-m", "reasonlm", "chat", *args], env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


# --- the REPL in a pseudo-terminal -------------------------------------------------------------
def test_repl_session(models, tmp_path):
    child = spawn("--model", models["trained"])
    send(child, QUESTION)
    # a TTY gets styling: reasoning dimmed, then the final answer line highlighted
    child.expect(re.escape(display.DIM) + r"\d")
    child.expect(re.escape(display.FINAL + "#### "))
    child.expect(PROMPT)

    send(child, "/verify")
    child.expect("checked as arithmetic \\(true answer 5\\)")
    child.expect(r"first wrong step: \d+ of \d+|all \d+ steps check out")
    child.expect(PROMPT)

    send(child, "/samples 3")
    child.expect(r"majority answer: \S+ \(([123]) of 3 agree\)|no majority")
    child.expect(PROMPT)

    saved = tmp_path / "session.jsonl"
    send(child, f"/save {saved}")
    child.expect("saved 2 messages")
    child.expect(PROMPT)
    (line,) = saved.read_text().splitlines()
    messages = json.loads(line)["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == QUESTION and "#### " in messages[1]["content"]
    assert os.listdir(tmp_path) == ["session.jsonl"]  # no temporary file left behind

    send(child, "4+5")  # second turn: the first turn's prompt and answer come from the KV cache
    child.expect(PROMPT)
    send(child, "/stats")
    child.expect(r"time to first token [\d.]+ s, [\d.]+ tokens/s .*prompt (\d+) tokens, (\d+) reused")
    prompt_tokens, reused = int(child.match.group(1)), int(child.match.group(2))
    assert 0 < reused < prompt_tokens
    child.expect(PROMPT)

    send(child, "/set foo=1")
    child.expect("unknown setting 'foo' \\(valid: temperature, top_p, max_new_tokens, seed\\)")
    child.expect(PROMPT)
    send(child, "/set top_p=2")
    child.expect("bad value for top_p: '2'")
    child.expect(PROMPT)
    send(child, "/frob")
    child.expect("unknown command '/frob'; commands: /reset /system /set /greedy /samples /verify")
    child.expect(PROMPT)
    send(child, "/reset")
    child.expect("conversation cleared")
    child.expect(PROMPT)
    send(child, "/verify")
    child.expect("no answer to verify yet")
    child.expect(PROMPT)

    # /load a conversation with a known wrong step; /verify marks exactly that one
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"messages": [{"role": "user", "content": "8+1-5"},
                                              {"role": "assistant", "content": "8+1=9\n9-5=3\n#### 3"}]}) + "\n")
    send(child, f"/load {wrong}")
    child.expect("loaded 1 turns")
    child.expect(PROMPT)
    send(child, "/verify")
    child.expect("1. 8\\+1=9")
    child.expect("2. 9-5=3   <- first wrong step")
    child.expect("answer 3: wrong")
    child.expect(PROMPT)

    time.sleep(0.1)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in child.before


def test_ctrl_c_stops_generation_then_exits_at_empty_prompt(models):
    # started with SIGINT ignored, as a background job's children are: the REPL must restore it
    child = spawn("--model", models["endless"], "--plain", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    send(child, "/set max_new_tokens=1000000")
    child.expect(PROMPT)
    send(child, "1+2")
    child.expect(r"1\+2")  # the echo of what we typed, then streamed tokens: wait for those, not
    child.expect(r"[\s\S]{40}")  # a fixed sleep, so a busy machine cannot interrupt too early
    assert child.isalive()  # the endless model is now generating (it cannot stop by itself)
    child.sendintr()
    child.expect(r"\[interrupted; this turn is not kept\]")
    child.expect(PROMPT)
    send(child, "/set max_new_tokens=5")  # the session still works after the interrupt
    child.expect(PROMPT)
    send(child, "1+2")
    child.expect(r"\[stopped at 5 tokens")
    child.expect(PROMPT)
    time.sleep(0.2)
    child.sendintr()  # Ctrl-C at an empty prompt: a clean exit
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in child.before


# --- one-shot mode and errors -------------------------------------------------------------------
def test_one_shot_prints_a_plain_answer(models):
    result = run("--model", models["trained"], "-p", QUESTION)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "you>" not in result.stdout
    assert re.search(r"^#### \S+$", result.stdout, re.M)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--model", "/no/such/model"], "error: model path not found: /no/such/model"),
    (["--model", "TRAINED", "--adapter", "/no/such/adapter"], "error: adapter path not found: /no/such/adapter"),
])
def test_missing_model_or_adapter_is_one_line(models, flags, message):
    result = run(*[models["trained"] if f == "TRAINED" else f for f in flags], "-p", "1+1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message]
    assert "Traceback" not in result.stderr


# --- the parts, in-process ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(models):
    from reasonlm.model import load_adapter
    return load_adapter(models["trained"])


def test_prefix_reuse_gives_the_same_answer_as_a_fresh_prefill(loaded):
    model, tok = loaded
    settings = chat.Settings(max_new_tokens=30)
    warm = chat.Chat(engine_for(model, tok), tok, settings, out=io.StringIO())
    warm.ask(QUESTION, notes=lambda *a: None)
    second = warm.ask("6-1+2", notes=lambda *a: None).reply
    assert second.reused_tokens > 0
    cold = engine_for(model, tok).stream()
    fresh = cold.generate(warm.prompt_ids("6-1+2", warm.history[:2]), SamplingParams(max_new_tokens=30))
    assert fresh.reused_tokens == 0 and fresh.tokens == second.tokens


def test_answers_stream_token_by_token(loaded):
    model, tok = loaded
    writes = []  # every write call: a token streams as its own write
    out = SimpleNamespace(write=writes.append, flush=lambda: None)
    c = chat.Chat(engine_for(model, tok), tok, chat.Settings(max_new_tokens=40), plain=True, out=out)
    turn = c.ask(QUESTION)
    assert len(writes) > 5 and "".join(writes) == turn.text + "\n"


def test_detokenizer_handles_multibyte_characters(loaded):
    _, tok = loaded
    text = "é ✓ 12×3=36\n#### 36 ünïcode 😀"
    pieces = []
    d = Detokenizer(tok, pieces.append)
    for t in tok(text, add_special_tokens=False)["input_ids"]:
        d.push(t)
    d.finish()
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


def test_painter_dims_steps_and_highlights_the_final_line():
    out = io.StringIO()
    p = display.Painter(out, plain=False)
    for piece in ["8+1", "=9\n", "##", "## 9", "\n"]:
        p.feed(piece)
    p.close()
    assert out.getvalue() == f"{display.DIM}8+1=9{display.RESET}\n{display.FINAL}#### 9{display.RESET}\n"
    out = io.StringIO()
    p = display.Painter(out, plain=True)
    p.feed("8+1=9\n#### 9")
    p.close()
    assert out.getvalue() == "8+1=9\n#### 9\n"


HOSTILE = "1+1=2\x1b]0;owned\x07 \x1b]52;c;cm0gLXJmIH4=\x07\r\x9b2J\x08\n#### 2\x1b[8m"


@pytest.mark.parametrize("plain", [False, True])
def test_control_characters_from_the_model_are_shown_escaped(loaded, plain):
    """Streamed tokens, /verify's steps and /samples' answers: no control character from the
    model reaches the terminal (window titles, OSC 52 clipboard writes, cursor moves); newline
    and tab do, and our own colours still do."""
    _, tok = loaded
    out = io.StringIO()
    c = chat.Chat(ScriptedEngine(tok, HOSTILE + "\tx"), tok, chat.Settings(), plain=plain, out=out)
    assert c.ask("1+1").text == HOSTILE + "\tx"  # the history keeps what the model said
    c.command("/verify")
    c.command("/samples 2")
    shown = out.getvalue()
    for ours in (display.DIM, display.FINAL, display.GOOD, display.BAD, display.RESET):
        shown = shown.replace(ours, "")
    assert not [ch for ch in shown if ord(ch) in display.CONTROL_ESCAPES]
    assert "\\x1b]52;c;cm0gLXJmIH4=\\x07\\x0d\\x9b2J" in shown and "\t" in shown
    assert shown.count("1+1=2\\x1b]0;owned") >= 2  # the stream and /verify's step


def test_a_prompt_longer_than_the_context_is_refused(loaded):
    model, tok = loaded
    c = chat.Chat(engine_for(model, tok), tok, chat.Settings())
    with pytest.raises(chat.ContextError, match="model's context is 256 tokens"):
        c.ask("1+" * 200 + "1")


def test_settings_parse_and_name_the_bad_item():
    s = chat.parse_settings("temperature=0.7 top_p=0.9 max_new_tokens=64", chat.Settings())
    assert (s.temperature, s.top_p, s.max_new_tokens) == (0.7, 0.9, 64)
    for text, message in [("temp=1", "unknown setting 'temp'"), ("temperature=-1", "temperature: '-1'"),
                          ("max_new_tokens=1.5", "max_new_tokens: '1.5'"), ("top_p", "top_p: missing value")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            chat.parse_settings(text, chat.Settings())


def test_save_and_load_round_trip(tmp_path):
    history = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "1+1=2\n#### 2"}]
    path = str(tmp_path / "s.jsonl")
    session.save_session(path, "be brief", history)
    assert session.load_session(path) == ("be brief", history)
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "assistant", "content": "x"}]}\n')
    with pytest.raises(ValueError, match="alternating user/assistant"):
        session.load_session(str(tmp_path / "bad.jsonl"))


# --- issue 30, fault 9 ----------------------------------------------------------------------------
def test_input_that_is_not_utf8_is_replaced_and_the_session_goes_on(models, tmp_path):
    """A non-UTF-8 byte piped in or passed with -p (Python hands it over as a lone surrogate, which
    the tokenizer cannot encode) ended the session with a traceback: it becomes U+FFFD, a note says
    so, and the session goes on to save the conversation."""
    saved = tmp_path / "s.jsonl"
    piped = subprocess.run([sys.executable, "-m", "reasonlm", "chat", "--model", models["trained"]],
                           input=b"3+\xff4\n" + f"/save {saved}\n".encode(), env=ENV, cwd=ROOT,
                           capture_output=True, timeout=60)
    out, err = piped.stdout.decode(errors="replace"), piped.stderr.decode(errors="replace")
    assert piped.returncode == 0 and "Traceback" not in err, err
    assert display.NOT_UTF8 in out and "saved 2 messages" in out
    assert session.load_session(str(saved))[1][0]["content"] == "3+\ufffd4"
    one_shot = subprocess.run([sys.executable, "-m", "reasonlm", "chat", "--model", models["trained"].encode(),
                               "-p", b"3+\xff4"], env=ENV, cwd=ROOT, capture_output=True, timeout=60)
    err = one_shot.stderr.decode(errors="replace")
    assert one_shot.returncode == 0 and "Traceback" not in err and display.NOT_UTF8 in err, err
    assert display.readable_input("caf\udce9 \udcc3\udca9") == ("caf\ufffd \u00e9", True)  # a valid pair decodes
    assert display.readable_input("1+1") == ("1+1", False)


def test_save_onto_an_existing_file_refuses_unless_forced_and_keeps_its_mode(tmp_path):
    out = io.StringIO()
    c = chat.Chat(ScriptedEngine.__new__(ScriptedEngine), None, chat.Settings(), out=out)
    c.history = [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "#### 2"}]
    mine = tmp_path / "notes.jsonl"
    mine.write_text("the user's own file\n")
    os.chmod(mine, 0o600)
    c.command(f"/save {mine}")
    assert mine.read_text() == "the user's own file\n"
    assert f"error: {mine} exists; /save --force {mine} replaces it (nothing was written)" in out.getvalue()
    c.command(f"/save --force {mine}")
    assert session.load_session(str(mine))[1] == c.history and "saved 2 messages" in out.getvalue()
    assert os.stat(mine).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["notes.jsonl"]
