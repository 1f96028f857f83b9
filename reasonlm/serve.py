"""`reasonlm serve`: the model over the OpenAI-compatible HTTP API, with a web chat page at `/`.

    reasonlm serve --model out/tiny-cpu/base --adapter out/tiny-cpu/train/adapter [--host 127.0.0.1] [--port 8000]

Routes (what vLLM, llama.cpp's llama-server and Ollama expose; docs/serving.md has the details):
  POST /v1/chat/completions   {messages, max_tokens, temperature, top_p, seed, stop, stream}
  POST /v1/completions        {prompt, ...the same}: the prompt text as it is, no chat template
  GET  /v1/models, GET /health, GET / (serve_page.html: streamed chat with every step marked)

A request may ask for checker-guided decoding with the extra field `search` (reasonlm/search.py):
a method name or {method, ...eval.search's settings}, e.g. {"method": "step_retry", "retries": 8};
the answer's `reasonlm` field then also holds {search: {method, generated_tokens, steps_retried,
gave_up, rejected: [{step, text, why}]}}. A search decodes apart from the shared batch, one
request at a time, and its answer is sent once found (streamed requests get it in chunks then).
Settings a server must bound (retries, k, n, candidates, backup, retry_budget, width, expand) are
at most SEARCH_LIMIT each.

Every answer carries the task checker's verdict on its steps in an extra field, `reasonlm`, next to
the standard ones: {family, steps: [{text, ok}], answer, answer_correct, chain_valid,
first_bad_step}, or {family: null} when no task family reads the question. The verdict needs no
gold answer: the question is parsed the way chat's /verify parses it. A streamed answer sends the
verdict so far with every chunk that completes a step line, and the whole verdict with the last.

Decoding is shared, by continuous batching: one scheduler thread runs an engine LiveBatch; a
request that arrives while it decodes is prefilled and joins it before the next step (up to
max_batch rows), so it never waits for another answer to end, and each row leaves as it finishes.
A request's row is freed at the next step when its client disconnects or one of its stop strings
appears (Job.cancel sets the row's budget to 0). A model failure ends every running request: a
500 body, or, once a stream has started, an OpenAI-style error event and [DONE].

Limits (ServeConfig): 127.0.0.1 unless --host says otherwise; bodies over max_body_bytes get 413
unread; max_tokens above the limit 400; more than max_concurrent requests in flight 429. Every bad
request gets a 4xx with {"error": {"message", "type", "param", "code"}}; a failure inside the
server a 500 with the same shape, never a traceback, and the server keeps serving.
"""
from __future__ import annotations

import dataclasses
import json
import os
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from reasonlm import search
from reasonlm.answer import cut_at_stop, encode_prompt
from reasonlm.config import ConfigError, Recipe, SearchConfig, ServeConfig
from reasonlm.detokenizer import Detokenizer
from reasonlm.engine import LiveRow, SamplingParams, engine_for
from reasonlm.model import load_adapter
from reasonlm.verdict import judge_question

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve_page.html")
ROLES = ("system", "user", "assistant")
DONE = object()  # the end of a request's token queue
SEARCH_LIMIT = 16  # the most retries, samples, candidates, beams... one request's search may ask for
SEARCH_BOUNDED = ("retries", "k", "n", "candidates", "backup", "retry_budget", "width", "expand")


class RequestError(Exception):
    """A bad request: HTTP status and the OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# --- the verdict: the one call site of the checker ------------------------------------------------
def step_verdict(question: str | None, text: str) -> dict:
    """The checker's verdict on an answer's steps, from the question alone (verdict.judge_question,
    chat's /verify path)."""
    found = judge_question(question, text) if question else None
    if found is None:
        return {"family": None}
    family, example, verdict = found
    parsed, check = verdict.parsed, verdict.check
    out = {"family": family, "steps": [{"text": s, "ok": bool(ok)} for s, ok in zip(parsed.steps, check.step_ok)],
           "answer": parsed.answer, "chain_valid": bool(check.chain_valid), "first_bad_step": check.first_bad_step}
    if example.answer and parsed.answer is not None:
        out["answer_correct"] = bool(check.answer_correct)
    return out


# --- decoding: continuous batching ---------------------------------------------------------------
@dataclass
class Job:
    """One request's generation: its prompt, its sampling settings and the queue its tokens go to."""
    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    tokens: queue.Queue = field(default_factory=queue.Queue)  # token ids, then DONE (or an Exception)
    cancelled: bool = False
    row: LiveRow | None = None

    def cancel(self) -> None:
        """Free this request's row at the engine's next step (a disconnected client, a stop string)."""
        self.cancelled = True
        if self.row is not None:
            self.row.budget = 0


class Scheduler(threading.Thread):
    """Continuous batching: one engine LiveBatch decodes every running request; the requests that
    arrive while it decodes join it before the next step (up to max_batch rows), each with its
    own budget, temperature, top_p and seed, and leave it as they finish."""

    def __init__(self, engine, max_batch: int):
        super().__init__(daemon=True, name="reasonlm-scheduler")
        self.engine, self.max_batch, self.inbox = engine, max_batch, queue.Queue()

    def submit(self, job: Job) -> Job:
        self.inbox.put(job)
        return job

    def run(self):
        batch, running = None, []
        while True:
            if not running:  # idle: wait for a request
                waiting = [self.inbox.get()]
                batch = self.engine.live_batch()  # the engine as it is now (tests swap it)
            else:
                waiting = []
            while len(running) + len(waiting) < self.max_batch and batch.accepts_rows:
                try:
                    waiting.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            for job in [j for j in waiting if j.cancelled]:  # its client left while it waited
                job.tokens.put(DONE)
            waiting = [j for j in waiting if not j.cancelled]
            rows = []
            for job in list(waiting):  # one row per job: settings the engine refuses fail that job alone
                try:
                    rows.append(batch.new_row(job.max_tokens, job.temperature, job.top_p, job.seed, job.tokens.put))
                except ValueError as e:
                    job.tokens.put(e)
                    waiting.remove(job)
            try:
                if waiting:
                    batch.admit([j.prompt for j in waiting], rows)
                    for job, row in zip(waiting, rows):
                        job.row = row
                        if job.cancelled:
                            row.budget = 0
                    running += waiting
                if running:
                    batch.step()
            except Exception as e:  # a failure in the model must not kill the scheduler: its requests hear of it
                for job in running + [j for j in waiting if j not in running]:
                    job.tokens.put(DONE if job.row is not None and job.row.done else e)
                batch.fail()
                running = []
                continue
            for job in running:
                if job.row.done:
                    job.tokens.put(DONE)
            running = [j for j in running if not j.row.done]


# --- reading a request --------------------------------------------------------------------------
def _number(body: dict, key: str, default, lo: float, hi: float, integer: bool = False):
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise RequestError(400, f"{key} must be {kind} in [{lo:g}, {hi:g}], got {value!r}", key, "invalid_value")
    return value


def _text(content, where: str) -> str:
    """A message's content: a string, or OpenAI's list of {type: text, text} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise RequestError(400, f"{where}.content must be a string or a list of text parts", where, "invalid_value")


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "stop must be a string or a list of at most 4 non-empty strings", "stop", "invalid_value")
    return stop


@dataclass
class Ask:
    """A validated request: what to decode, and what to answer with."""
    prompt: list[int]
    question: str | None  # what the verdict parses (the last user message, or the prompt)
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: list[str]
    stream: bool
    chat: bool
    search: SearchConfig | None = None  # None: the shared batch's decoding
    checker: search.Checker | None = None  # the search's, from the question alone


def read_request(body, cfg: ServeConfig, tokenizer, context: int | None, chat: bool) -> Ask:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object", None, "invalid_body")
    if body.get("n", 1) != 1:
        raise RequestError(400, "only n=1 is supported", "n", "unsupported_value")
    for key in ("logprobs", "echo", "tools", "functions"):
        if body.get(key) not in (None, False, 0, []):
            raise RequestError(400, f"{key} is not supported by this server", key, "unsupported_parameter")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "messages must be a non-empty list of {role, content}", "messages", "invalid_value")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise RequestError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}]",
                                   "invalid_value")
            clean.append({"role": m["role"], "content": _text(m.get("content"), f"messages[{i}]")})
        if clean[-1]["role"] != "user":
            raise RequestError(400, "the last message must be the user's", "messages", "invalid_value")
        if cfg.system and clean[0]["role"] != "system":
            clean.insert(0, {"role": "system", "content": cfg.system})
        prompt, question = encode_prompt(tokenizer, clean), clean[-1]["content"]
    else:
        text = body.get("prompt")
        if isinstance(text, list) and len(text) == 1:
            text = text[0]
        if not isinstance(text, str) or not text:
            raise RequestError(400, "prompt must be a non-empty string", "prompt", "invalid_value")
        prompt, question = tokenizer(text, add_special_tokens=False)["input_ids"], text
    if not prompt:
        raise RequestError(400, "the prompt is empty after tokenization", "prompt", "invalid_value")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(body, key, cfg.max_tokens, 1, cfg.max_tokens, integer=True)
    if context:
        if len(prompt) >= context:
            raise RequestError(400, f"the prompt is {len(prompt)} tokens; the model's context is {context}",
                               "messages" if chat else "prompt", "context_length_exceeded")
        max_tokens = min(max_tokens, context - len(prompt))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, f"stream must be true or false, got {stream!r}", "stream", "invalid_value")
    temperature, top_p = _number(body, "temperature", 0.0, 0, 2), _number(body, "top_p", 1.0, 0, 1)
    try:  # the engine's own checks (top_p 0 is in [0, 1] but no distribution): refused here, not mid-batch
        SamplingParams(temperature=temperature, top_p=top_p)
    except ValueError as e:
        param = str(e).split()[0]
        raise RequestError(400, str(e), param if param in ("temperature", "top_p") else None, "invalid_value") from None
    ask = Ask(prompt, question, max_tokens, temperature, top_p,
              _number(body, "seed", 0, -2**63, 2**63 - 1, integer=True), _stop(body), stream, chat)
    ask.search, ask.checker = _search(body, question)
    return ask


def _search(body: dict, question: str) -> tuple[SearchConfig | None, search.Checker | None]:
    """The request's `search` field: (its settings, the checker from the question), or (None, None)
    for plain decoding."""
    spec = body.get("search")
    if spec is None or spec == "greedy":
        return None, None
    spec = {"method": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict):
        raise RequestError(400, "search must be a method name or an object {method, ...}", "search", "invalid_value")
    try:
        cfg = SearchConfig(**spec)
    except TypeError:
        known = ", ".join(f.name for f in dataclasses.fields(SearchConfig))
        raise RequestError(400, f"search takes {known}; got {', '.join(sorted(map(str, spec)))}", "search",
                           "invalid_value") from None
    except ConfigError as e:
        raise RequestError(400, str(e), "search", "invalid_value") from None
    for key in SEARCH_BOUNDED:
        if getattr(cfg, key) > SEARCH_LIMIT:
            raise RequestError(400, f"search.{key} must be at most {SEARCH_LIMIT} on this server, got "
                                    f"{getattr(cfg, key)}", "search", "invalid_value")
    if cfg.method == "greedy":
        return None, None
    checker = search.checker_for_question(question)
    try:
        search.check_methods(cfg.method, None if checker else "this question", "search.method")
    except ValueError as e:
        raise RequestError(400, str(e), "search", "invalid_value") from None
    return cfg, checker


# --- the server ----------------------------------------------------------------------------------
class Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never keeps the process alive
    allow_reuse_address = True

    def __init__(self, cfg: ServeConfig, model, tokenizer, name: str):
        super().__init__((cfg.host, cfg.port), Handler)
        self.cfg, self.tokenizer, self.name, self.created = cfg, tokenizer, name, int(time.time())
        engine = engine_for(model, tokenizer)
        self.context = engine.context_size
        self.scheduler = Scheduler(engine, cfg.max_batch)
        self.scheduler.start()
        self.slots = threading.BoundedSemaphore(cfg.max_concurrent)
        self.search_lock = threading.Lock()  # one search at a time (each decodes a batch of its own)

    def run_search(self, ask: Ask) -> tuple[Job, dict]:
        """A searched answer as a finished Job (its tokens, then DONE) and what the search did."""
        with self.search_lock:
            [out] = search.run(self.scheduler.engine, [search.Problem(ask.prompt, ask.max_tokens, ask.seed, ask.checker)],
                               ask.search, top_p=ask.top_p)
        job = Job(ask.prompt, ask.max_tokens, ask.temperature, ask.top_p, ask.seed)
        for token in out.tokens:
            job.tokens.put(token)
        job.tokens.put(DONE)
        return job, {"method": ask.search.method, "generated_tokens": out.generated, "steps_retried": out.retried,
                     "gave_up": out.gave_up, "rejected": [dataclasses.asdict(r) for r in out.rejected]}


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # one line per request, no client-controlled escapes
        sys.stderr.write(f"serve: {self.address_string()} {(fmt % args).encode('unicode_escape').decode()}\n")

    # --- responses ---
    def send_json(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def fail(self, error: RequestError) -> None:
        self.close_connection = True  # the rest of a refused body may still be on the wire
        self.send_json(error.status, error.body())

    def do_GET(self):
        self.route(self.get)

    def do_POST(self):
        self.route(self.post)

    def route(self, method) -> None:
        try:
            method()
        except RequestError as e:
            self.fail(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a bug must cost one request, never the server
            print(f"serve: internal error: {type(e).__name__}: {e}", file=sys.stderr)
            try:
                self.fail(RequestError(500, "internal server error", None, "internal_error", "server_error"))
            except OSError:
                self.close_connection = True

    def get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self.send_json(200, {"status": "ok"})
        elif path == "/v1/models":
            self.send_json(200, {"object": "list", "data": [{"id": self.server.name, "object": "model",
                                                              "created": self.server.created, "owned_by": "reasonlm"}]})
        elif path in ("/", "/index.html"):
            with open(PAGE, "rb") as f:
                data = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            raise RequestError(404, f"no route GET {path}", None, "not_found")

    def post(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/v1/chat/completions", "/v1/completions"):
            raise RequestError(404, f"no route POST {path}", None, "not_found")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(411, "a Content-Length header is required", None, "length_required")
        if int(length) > self.server.cfg.max_body_bytes:
            raise RequestError(413, f"the body is {length} bytes; this server takes at most "
                                    f"{self.server.cfg.max_body_bytes}", None, "body_too_large")
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the body is not valid JSON: {e}", None, "invalid_json") from None
        ask = read_request(body, self.server.cfg, self.server.tokenizer, self.server.context,
                           chat=path == "/v1/chat/completions")
        if not self.server.slots.acquire(blocking=False):
            raise RequestError(429, f"the server is busy ({self.server.cfg.max_concurrent} requests in flight); "
                                    "retry later", None, "too_many_requests", "rate_limit_error")
        held = [True]

        def free() -> None:  # the slot is free once decoding ends, before the answer's last bytes go out:
            if held[0]:      # a client that asks again the moment it has its answer must not get 429
                held[0] = False
                self.server.slots.release()
        try:
            searched = None
            if ask.search is not None:
                job, searched = self.server.run_search(ask)
            else:
                job = self.server.scheduler.submit(Job(ask.prompt, ask.max_tokens, ask.temperature, ask.top_p, ask.seed))
            try:
                self.answer(ask, job, free, searched)
            finally:
                job.cancel()  # no-op when it finished; frees the row when the client went away
        finally:
            free()

    # --- an answer, streamed or whole ---
    def answer(self, ask: Ask, job: Job, free, searched: dict | None = None) -> None:
        ident = f"{'chatcmpl' if ask.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": ident, "object": "chat.completion" if ask.chat else "text_completion",
                "created": int(time.time()), "model": self.server.name}
        pieces: list[str] = []
        detok = Detokenizer(self.server.tokenizer, pieces.append)
        text, n_tokens, stopped, steps_seen = "", 0, False, 0
        if ask.stream:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            if ask.chat:
                self.event({**head, "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
        while True:
            token = job.tokens.get()
            if token is DONE or isinstance(token, Exception):
                free()
            if token is DONE:
                detok.finish()
            elif isinstance(token, Exception):
                if not ask.stream:
                    raise token  # route answers 500 with an error body
                # headers and chunks went out already: end the stream with an error event that
                # OpenAI clients raise as an APIError, not with a second response or a cut connection
                print(f"serve: model failure mid-stream: {type(token).__name__}: {token}", file=sys.stderr)
                self.event(RequestError(500, "the model failed while answering", None, "internal_error",
                                        "server_error").body())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                return
            elif not stopped:
                n_tokens += 1
                detok.push(token)
            new = "".join(pieces)
            pieces.clear()
            if new and not stopped:
                cut = cut_at_stop(text + new, ask.stop)
                if len(cut) < len(text + new):  # a stop string (never empty) was found
                    new, stopped = cut[len(text):], True
                    job.cancel()
                text += new
                if ask.stream and new:
                    chunk = self.delta(head, ask, new)
                    if text.count("\n") > steps_seen:  # a step line ended: its verdict goes with it
                        steps_seen = text.count("\n")
                        chunk["reasonlm"] = step_verdict(ask.question, text[:text.rfind("\n")])
                    self.event(chunk)
            if token is DONE:
                break
        finish = "length" if n_tokens >= ask.max_tokens and not stopped else "stop"
        verdict = step_verdict(ask.question, text)
        if searched is not None:
            verdict["search"] = searched
        usage = {"prompt_tokens": len(ask.prompt), "completion_tokens": n_tokens,
                 "total_tokens": len(ask.prompt) + n_tokens}
        if ask.stream:
            end = self.delta(head, ask, "")
            end["choices"][0]["finish_reason"] = finish
            self.event({**end, "usage": usage, "reasonlm": verdict})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            return
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                  if ask.chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
        self.send_json(200, {**head, "choices": [choice], "usage": usage, "reasonlm": verdict})

    def delta(self, head: dict, ask: Ask, text: str) -> dict:
        if ask.chat:
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": None}]}
        return {**head, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}]}

    def event(self, obj: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()


# --- entry point --------------------------------------------------------------------------------
def start(cfg: ServeConfig, model, tokenizer) -> Server:
    """A server bound to cfg.host:cfg.port (port 0: a free one) that has not started serving yet."""
    name = cfg.name or os.path.basename(os.path.normpath(cfg.adapter or cfg.model))
    return Server(cfg, model, tokenizer, name)


def main(cfg: ServeConfig, recipe: Recipe | None = None) -> None:
    if recipe is not None and not cfg.system:
        cfg = dataclasses.replace(cfg, system=recipe.chat.system)
    print(f"loading {cfg.model}" + (f" + {cfg.adapter}" if cfg.adapter else "") + " ...", file=sys.stderr)
    model, tokenizer = load_adapter(cfg.model, cfg.adapter or None, merged=cfg.merged,
                                    device=recipe.device if recipe else "auto")
    server = start(cfg, model, tokenizer)
    host, port = server.server_address[:2]
    print(f"serving {server.name} on http://{host}:{port}/ (OpenAI API under /v1; Ctrl-C stops)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
