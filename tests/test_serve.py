"""`reasonlm serve`: the OpenAI-compatible API on a toy model, started on port 0 in a thread and
asked with urllib and with the `openai` package; answers equal the engine's greedy output, bad
requests get 4xx with an OpenAI error body and the server keeps serving."""
import contextlib
import glob
import importlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import openai
import pytest
import torch
import yaml

from reasonlm import cli, search
from reasonlm.answer import encode_prompt, prompt_messages, stop_token_ids
from reasonlm.config import ConfigError, SearchConfig, ServeConfig, load_recipe
from reasonlm.engine import SamplingParams, engine_for
from reasonlm.model import load_adapter
from reasonlm.serve import DONE, Job, Scheduler, start, step_verdict
from tests.helpers import ROOT
from tests.helpers import TINY_RECIPE

QUESTION = "3+4-2"


@pytest.fixture(scope="module")
def server(toy):
    model, tok = toy
    srv = start(ServeConfig(model="toy", port=0, max_tokens=24, max_body_bytes=4096, max_concurrent=8, max_batch=8),
                model, tok)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(server, path):
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def post(server, path, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url(server, path), data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def get(server, path):
    with urllib.request.urlopen(url(server, path), timeout=60) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def events(text):
    """The data lines of an SSE body, parsed (the last must be [DONE])."""
    lines = [line[len("data: "):] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def greedy(toy, prompt_ids, budget):
    model, tok = toy
    engine = engine_for(model, tok)
    return tok.decode(engine.generate([prompt_ids], SamplingParams(max_new_tokens=budget))[0], skip_special_tokens=True)


def test_models_health_and_the_page(server):
    status, kind, body = get(server, "/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "toy"
    assert json.loads(get(server, "/health")[2]) == {"status": "ok"}
    status, kind, page = get(server, "/")
    assert status == 200 and kind.startswith("text/html")
    assert "/v1/chat/completions" in page and "http://" not in page and "https://" not in page  # no CDN


def test_chat_stream_and_not_equal_the_engines_greedy_output(server, toy):
    want = greedy(toy, encode_prompt(toy[1], prompt_messages(QUESTION)), 20)
    body = {"model": "toy", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 20}
    status, text = post(server, "/v1/chat/completions", body)
    reply = json.loads(text)
    assert status == 200 and reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": want}
    assert reply["usage"]["completion_tokens"] <= 20 and reply["reasonlm"]["family"] == "arithmetic"
    status, text = post(server, "/v1/chat/completions", {**body, "stream": True})
    chunks = events(text)
    assert status == 200 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == want
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["reasonlm"] == reply["reasonlm"]


def test_completions_take_the_prompt_as_it_is(server, toy):
    prompt = "Question: 3+4\nAnswer:"
    want = greedy(toy, toy[1](prompt, add_special_tokens=False)["input_ids"], 12)
    status, text = post(server, "/v1/completions", {"model": "toy", "prompt": prompt, "max_tokens": 12})
    reply = json.loads(text)
    assert status == 200 and reply["object"] == "text_completion" and reply["choices"][0]["text"] == want
    status, text = post(server, "/v1/completions", {"model": "toy", "prompt": prompt, "max_tokens": 12, "stream": True})
    assert "".join(c["choices"][0]["text"] for c in events(text)) == want


@pytest.mark.parametrize("raw, status, code", [
    (b"{not json", 400, "invalid_json"),
    (json.dumps({"messages": "hi"}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}], "max_tokens": 10_000}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}], "temperature": "hot"}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}], "top_p": 0}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "robot", "content": "1+1"}]}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}], "stream": "yes"}).encode(), 400, "invalid_value"),
    (json.dumps([1, 2]).encode(), 400, "invalid_body"),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}], "search": "beam"}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}], "search": {"method": "step_retry", "retries": 99}}
                ).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "1+1"}], "search": {"method": "step_retry", "tries": 2}}
                ).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "1" * 5000}]}).encode(), 413, "body_too_large"),
])
def test_bad_requests_get_a_4xx_error_body_and_the_server_stays_up(server, raw, status, code):
    got, text = post(server, "/v1/chat/completions", None, raw=raw)
    error = json.loads(text)["error"]
    assert got == status and error["code"] == code and error["message"] and error["type"]
    assert "Traceback" not in text
    assert get(server, "/health")[0] == 200


def test_a_request_can_ask_for_checker_guided_search(server, toy):
    """`search` in a request: the answer is search.run's on the same problem, and the `reasonlm` field
    says what the search did (stream and not)."""
    model, tok = toy
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24,
            "search": {"method": "step_retry", "retries": 2}}
    status, text = post(server, "/v1/chat/completions", body)
    answer = json.loads(text)
    searched = answer["reasonlm"]["search"]
    prompt = encode_prompt(tok, prompt_messages(QUESTION))
    [expected] = search.run(engine_for(model, tok), [search.Problem(prompt, 24, 0, search.checker_for_question(QUESTION))],
                            SearchConfig(method="step_retry", retries=2))
    assert status == 200 and answer["choices"][0]["message"]["content"] == tok.decode(expected.tokens,
                                                                                       skip_special_tokens=True)
    assert searched["method"] == "step_retry" and searched["generated_tokens"] == expected.generated
    assert searched["steps_retried"] == expected.retried and len(searched["rejected"]) == len(expected.rejected)
    status, text = post(server, "/v1/chat/completions", {**body, "stream": True})
    chunks = events(text)
    assert status == 200 and "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) \
        == answer["choices"][0]["message"]["content"]
    assert chunks[-1]["reasonlm"]["search"] == searched


def test_unknown_route_and_a_prompt_longer_than_the_context_are_refused(server):
    assert post(server, "/v1/embeddings", {"input": "x"})[0] == 404
    status, text = post(server, "/v1/completions", {"prompt": "1+" * 300, "max_tokens": 4})
    assert status == 400 and json.loads(text)["error"]["code"] == "context_length_exceeded"


def test_concurrent_requests_are_all_answered_alike(server):
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
    alone = json.loads(post(server, "/v1/chat/completions", body)[1])["choices"][0]["message"]["content"]
    results = [None] * 8

    def ask(i):
        results[i] = post(server, "/v1/chat/completions", {**body, "stream": i % 2 == 1})

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (status, text) in enumerate(results):
        assert status == 200
        got = ("".join(c["choices"][0]["delta"].get("content", "") for c in events(text)) if i % 2
               else json.loads(text)["choices"][0]["message"]["content"])
        assert got == alone  # greedy: the same answer whatever shares its batch


class Scripted(torch.nn.Module):
    """A stand-in model for the engine's general path: the row whose prompt is QUESTION's chat
    prompt writes `ids` one per step (then its stop token, or `ids` again when endless), at a
    model's pace. It records the rows of every decode step and the furthest token reached, can
    hold a lone row at token `hold_at` until `go()` is true, and can fail at token `fail_at`."""

    def __init__(self, tok, ids, endless=False, pace=0.0, hold_at=None, go=None, fail_at=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.start = len(encode_prompt(tok, prompt_messages(QUESTION))) - 1  # position of the prompt's last token
        self.ids, self.endless, self.pace, self.hold_at, self.go, self.fail_at = ids, endless, pace, hold_at, go, fail_at
        self.vocab, self.stop = len(tok), min(stop_token_ids(tok))
        self.widths, self.furthest = [], 0

    def forward(self, input_ids, position_ids, **_):
        k = (position_ids[:, -1] - self.start).tolist()  # token index of each row's next token
        if input_ids.shape[1] == 1:  # a decode step, not a prefill
            self.widths.append(len(k))
            self.furthest = max(self.furthest, max(k))
            if self.fail_at is not None and max(k) >= self.fail_at:
                raise RuntimeError("scripted failure")
            deadline = time.monotonic() + 30
            while self.hold_at is not None and len(k) == 1 and k[0] >= self.hold_at and not self.go() \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(self.pace)
        logits = torch.zeros(len(k), 1, self.vocab)
        for r, i in enumerate(k):
            logits[r, 0, self.ids[i % len(self.ids)] if self.endless or i < len(self.ids) else self.stop] = 1
        return SimpleNamespace(logits=logits)


@contextlib.contextmanager
def scripted(server, tok, text, **kw):
    """The server's engine swapped for one on a Scripted model while the block runs."""
    model = Scripted(tok, tok(text, add_special_tokens=False)["input_ids"], **kw)
    real = server.scheduler.engine
    server.scheduler.engine = engine_for(model, tok, fast=False)
    try:
        yield model
    finally:
        server.scheduler.engine = real


def test_streamed_steps_carry_the_checkers_verdict_as_they_arrive(server, toy):
    with scripted(server, toy[1], "3+4=7\n7-2=6\n#### 6"):
        status, text = post(server, "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": QUESTION}], "stream": True})
    marked = [c["reasonlm"] for c in events(text) if "reasonlm" in c]
    assert marked[0]["steps"] == [{"text": "3+4=7", "ok": True}]
    assert marked[1]["steps"] == [{"text": "3+4=7", "ok": True}, {"text": "7-2=6", "ok": False}]
    final = marked[-1]
    assert final["family"] == "arithmetic" and final["first_bad_step"] == 2 and final["answer_correct"] is False
    assert step_verdict("hello there", "3+4=7") == {"family": None}


def test_a_client_that_disconnects_mid_stream_frees_its_row(server, toy, monkeypatch):
    jobs = []
    submit = server.scheduler.submit
    monkeypatch.setattr(server.scheduler, "submit", lambda job: submit(jobs.append(job) or job))
    with scripted(server, toy[1], "1+1=2\n", endless=True, pace=0.02):
        body = json.dumps({"messages": [{"role": "user", "content": QUESTION}], "stream": True, "max_tokens": 24})
        sock = socket.create_connection(("127.0.0.1", server.server_address[1]))
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        seen = b""
        while b"data: " not in seen:
            seen += sock.recv(4096)
        sock.close()
        deadline = time.monotonic() + 60  # a hang guard only: the test waits for the row to end
        while not (jobs and jobs[0].row is not None and jobs[0].row.done) and time.monotonic() < deadline:
            time.sleep(0.01)
    row = jobs[0].row
    assert jobs[0].cancelled and row.done and len(row.tokens) < 24  # it left before its budget of 24 tokens
    assert post(server, "/v1/chat/completions",
                {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4})[0] == 200


def test_settings_the_engine_refuses_fail_only_their_own_request(toy):
    """A job the engine cannot sample (top_p 0, which read_request refuses before it gets here)
    queued with others: it alone gets the error; the others, admitted with it, are answered."""
    model, tok = toy
    scheduler = Scheduler(engine_for(model, tok), max_batch=8)
    prompt = encode_prompt(tok, prompt_messages(QUESTION))
    good, bad, other = (scheduler.submit(Job(prompt, 6, 0.0, top_p, 0)) for top_p in (1.0, 0.0, 1.0))
    scheduler.start()  # all three are queued: they are taken as one batch

    def drain(job):
        out = []
        while (item := job.tokens.get(timeout=60)) is not DONE and not isinstance(item, Exception):
            out.append(item)
        return out, item

    assert isinstance(drain(bad)[1], ValueError)
    want = engine_for(model, tok).generate([prompt], SamplingParams(max_new_tokens=6))[0]
    assert drain(good) == (want, DONE) and drain(other) == (want, DONE)


def test_a_request_joins_a_running_answer_instead_of_waiting_for_it(server, toy):
    """Continuous batching: the long answer is held at its 4th token until the short request is
    queued; the short one joins it, decodes beside it and is answered while the long one runs."""
    long_reply = {}
    with scripted(server, toy[1], "1+1=2\n", endless=True, hold_at=3,
                  go=lambda: server.scheduler.inbox.qsize() > 0 or "short" in long_reply) as model:
        body = {"messages": [{"role": "user", "content": QUESTION}]}
        thread = threading.Thread(target=lambda: long_reply.update(
            long=post(server, "/v1/chat/completions", {**body, "max_tokens": 24, "stream": True})))
        thread.start()
        while model.furthest < 3:
            time.sleep(0.01)
        status, text = post(server, "/v1/chat/completions", {**body, "max_tokens": 2})
        furthest_when_answered = model.furthest
        long_reply["short"] = True
        thread.join()
    assert status == 200 and json.loads(text)["usage"]["completion_tokens"] == 2
    assert furthest_when_answered < 23 and 2 in model.widths  # decoded together, answered before the long one
    assert long_reply["long"][0] == 200 and "".join(
        c["choices"][0]["delta"].get("content", "") for c in events(long_reply["long"][1])).count("1+1=2") >= 3


def test_a_model_failure_mid_stream_ends_the_stream_with_an_error_event(server, toy):
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 20}
    with scripted(server, toy[1], "1+1=2\n", endless=True, fail_at=5):
        status, text = post(server, "/v1/chat/completions", {**body, "stream": True})
        lines = [line for line in text.split("\n\n") if line]
        error = json.loads(lines[-2][len("data: "):])
        assert status == 200 and lines[-1] == "data: [DONE]" and error["error"]["type"] == "server_error"
        assert "Traceback" not in text and "".join(c["choices"][0]["delta"].get("content", "")
                                                   for c in map(json.loads, (l[6:] for l in lines[:-2])))
        client = openai.OpenAI(base_url=url(server, "/v1"), api_key="none", max_retries=0)
        with pytest.raises(openai.APIError):
            for _ in client.chat.completions.create(model="toy", stream=True, **body):
                pass
        status, text = post(server, "/v1/chat/completions", body)  # not streamed: a 500 error body
        assert status == 500 and json.loads(text)["error"]["code"] == "internal_error"
    assert post(server, "/v1/chat/completions", {**body, "max_tokens": 2})[0] == 200  # and it keeps serving


def test_the_openai_client_streams_and_not(server, toy):
    client = openai.OpenAI(base_url=url(server, "/v1"), api_key="none")
    assert [m.id for m in client.models.list()] == ["toy"]
    want = greedy(toy, encode_prompt(toy[1], prompt_messages(QUESTION)), 20)
    reply = client.chat.completions.create(model="toy", messages=[{"role": "user", "content": QUESTION}], max_tokens=20)
    assert reply.choices[0].message.content == want
    assert reply.model_extra["reasonlm"]["family"] == "arithmetic"  # the verdict rides along as an extra field
    stream = client.chat.completions.create(model="toy", messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=20, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == want
    prompt = "Question: 3+4\nAnswer:"
    text = client.completions.create(model="toy", prompt=prompt, max_tokens=8).choices[0].text
    assert text == greedy(toy, toy[1](prompt, add_special_tokens=False)["input_ids"], 8)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="toy", messages=[{"role": "user", "content": "x"}], max_tokens=10_000)


def test_serve_config_names_the_field_and_the_range():
    with pytest.raises(ConfigError, match=r"serve.port must be in 0..65535, got 70000"):
        ServeConfig(model="m", port=70000)
    with pytest.raises(ConfigError, match=r"serve.max_concurrent must be >= 1"):
        ServeConfig(model="m", max_concurrent=0)
    assert ServeConfig(model="m").host == "127.0.0.1"  # this machine only, unless told otherwise


def test_more_requests_than_max_concurrent_get_429(server):
    for _ in range(server.cfg.max_concurrent):  # every slot taken, as by requests in flight
        server.slots.acquire()
    try:
        status, text = post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}]})
    finally:
        for _ in range(server.cfg.max_concurrent):
            server.slots.release()
    assert status == 429 and json.loads(text)["error"]["type"] == "rate_limit_error"
    for _ in range(3):  # answered: its slot is free by the time the client has the answer
        assert post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "1+1"}],
                                                     "max_tokens": 2})[0] == 200
        taken = [server.slots.acquire(blocking=False) for _ in range(server.cfg.max_concurrent)]
        for ok in taken:
            if ok:
                server.slots.release()
        assert all(taken)


# --- clients no one here wrote: lm-evaluation-harness and a real browser (slow) ------------------
def missing(what: str):
    """Skip a test whose client is not installed; in CI (CI=true) fail it: .ci/run installs them all."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing; .ci/run installs it")
    pytest.skip(f"{what} is not installed")


def needed(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        missing(what)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny run (data, base, LoRA, eval on its test split; seconds of training) to serve."""
    out = tmp_path_factory.mktemp("tiny-run")
    recipe = out / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY_RECIPE, "out_dir": str(out / "run"), "direct_baseline": False,
                                      "eval": {**TINY_RECIPE["eval"], "splits": ["test"]}}))
    cli.main(["pipeline", str(recipe)])
    return out / "run", str(recipe)


@pytest.mark.slow
def test_lm_eval_scores_the_test_split_through_the_server_as_reasonlm_eval_does(tiny_run, tmp_path):
    needed("lm_eval", "lm-evaluation-harness (pip install lm-eval, in the dev extra)")
    run, recipe = tiny_run
    model, tok = load_adapter(str(run / "base"), str(run / "train" / "adapter"))
    srv = start(ServeConfig(model=str(run / "base"), adapter=str(run / "train" / "adapter"), port=0,
                            max_tokens=TINY_RECIPE["eval"]["max_new_tokens"], system=load_recipe(recipe).chat.system),
                model, tok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    task = yaml.safe_load(open(os.path.join(ROOT, "docs", "examples", "lmeval", "reasonlm_test.yaml")))
    task["dataset_kwargs"]["data_files"]["test"] = str(run / "data" / "jsonl" / "test.jsonl")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "reasonlm_test.yaml").write_text(yaml.safe_dump(task))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", "local-chat-completions", "--apply_chat_template",
             "--include_path", str(tmp_path / "tasks"), "--tasks", "reasonlm_test", "--log_samples",
             "--output_path", str(tmp_path / "lm"), "--gen_kwargs", f"max_gen_toks={TINY_RECIPE['eval']['max_new_tokens']}",
             "--model_args", f"base_url={url(srv, '/v1/chat/completions')},model=adapter,num_concurrent=4,max_retries=1"],
            capture_output=True, text=True, timeout=900, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    finally:
        srv.shutdown()
        srv.server_close()
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.load(open(glob.glob(str(tmp_path / "lm" / "**" / "results_*.json"), recursive=True)[0]))
    lm_accuracy = results["results"]["reasonlm_test"]["exact_match,strict-match"]
    report = json.load(open(run / "eval" / "report.json"))
    assert lm_accuracy == report["splits"]["test"]["accuracy"]
    # the same greedy answer for every problem, not just the same count of right ones
    ours = {s["id"]: s["output"] for s in map(json.loads, open(run / "eval" / "samples.jsonl")) if s["split"] == "test"}
    theirs = {s["doc"]["id"]: s["resps"][0][0] for s in map(json.loads, open(glob.glob(
        str(tmp_path / "lm" / "**" / "samples_reasonlm_test_*.jsonl"), recursive=True)[0]))}
    assert len(theirs) == len(ours) > 0 and theirs == ours


@pytest.mark.slow
def test_the_page_in_a_real_browser_streams_the_answer_with_its_step_marks(server, toy, tmp_path):
    webdriver = needed("selenium.webdriver", "selenium (pip install selenium, in the dev extra)")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        missing("Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service  # selenium is optional: imported once known present
    from selenium.webdriver.common.by import By
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,560"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        with scripted(server, toy[1], "3+4=7\n7-2=6\n#### 6", pace=0.08):
            browser.get(url(server, "/"))
            box = browser.find_element(By.ID, "q")
            box.send_keys(QUESTION)
            browser.find_element(By.ID, "send").click()
            seen, deadline = [], time.monotonic() + 120
            while time.monotonic() < deadline:  # watch the answer grow, step by step
                state = browser.execute_script(
                    "const a = document.querySelector('.assistant'); if (!a) return null;"
                    "return {ok: a.querySelectorAll('.step.ok').length, bad: a.querySelectorAll('.step.bad').length,"
                    " note: (a.querySelector('.note') || {}).textContent || null, text: a.textContent};")
                if state and (not seen or state != seen[-1]):
                    seen.append(state)
                if state and state["note"]:
                    break
                time.sleep(0.02)
            browser.save_screenshot(str(tmp_path / "serve.png"))
            if os.environ.get("REASONLM_SCREENSHOT"):  # docs/img/serve.png is taken this way
                shutil.copy(tmp_path / "serve.png", os.environ["REASONLM_SCREENSHOT"])
    finally:
        browser.quit()
    assert seen and seen[-1]["note"] == "arithmetic: step 2 is wrong, answer wrong"
    assert seen[-1]["ok"] == 1 and seen[-1]["bad"] == 1 and "#### 6" in seen[-1]["text"]
    streamed = [s for s in seen if s["ok"] == 1 and not s["note"]]
    assert streamed and any("7-2" not in s["text"] for s in streamed)  # step 1 marked before step 2 arrived
    assert (tmp_path / "serve.png").stat().st_size > 1000


def test_bench_serve_smoke(tmp_path):
    """eval/bench_serve.py on the toy model: every request of a short load run is answered."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "eval", "bench_serve.py"), "--toy", "--clients", "3",
                        "--seconds", "1", "--max-tokens", "8", "--json", str(tmp_path / "b.json")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    numbers = json.load(open(tmp_path / "b.json"))
    assert numbers["serve"]["sent"] >= 3 and numbers["serve"]["lost"] == 0
    assert numbers["serve"]["answered"] == numbers["serve"]["sent"] == numbers["batched"]["problems"]
    assert "| serve, 3 clients" in r.stdout and "| engine batched (eval)" in r.stdout
