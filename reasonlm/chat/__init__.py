"""Chat REPL: talk to a model in the terminal, watch it reason step by step, check its steps.

    reasonlm chat --model out/tiny-cpu/base --adapter out/tiny-cpu/train/adapter
    reasonlm chat --model HuggingFaceTB/SmolLM2-135M-Instruct --recipe recipes/tiny-cpu.yaml
    reasonlm chat --model out/tiny-cpu/base --adapter out/tiny-cpu/train/adapter -p "8+1-5"

How it fits together:
  - Prompts: `answer.prompt_messages(question, system, history)` + `answer.encode_prompt`, the
    renderer the trainer and the evaluator use, so the model sees in chat exactly the shape it
    was trained and evaluated on (history goes through the tokenizer's chat template).
  - Generation: the engine (reasonlm/engine.py). Answers stream from `engine.stream()`, one
    sequence whose KV cache outlives the turn: turn n+1's prompt starts with turn n's prompt and
    answer, so only the tokens after the shared prefix are fed ("prefix reuse"). `/samples K`
    runs the K answers as one batch through `engine.generate`.
  - Display (chat/display.py): text is decoded incrementally (reasonlm/detokenizer.py: only new
    characters are printed), reasoning lines dimmed and the '#### N' line highlighted; plain when
    --plain, -p, or stdout is not a TTY.
  - Sessions (chat/session.py): /save and /load write and read chat-messages JSONL.
  - Checking: `/verify` finds a task family whose question format this is, rebuilds the
    example from the question text and runs that task's checker on every step
    (verdict.judge_question, what serve's step verdict calls too).
  - Search: `/search METHOD` answers with a checker-guided search (reasonlm/search.py) judged
    from the question alone; a line the checker rejected is shown dimmed and struck through,
    then the line that replaced it.
"""
from __future__ import annotations

import os
import signal
import sys
import warnings
from dataclasses import dataclass, field, fields

from transformers.utils import logging as hf_logging

from reasonlm.answer import FINAL_MARK, answer_key, encode_prompt, parse_completion, prompt_messages
from reasonlm import search
from reasonlm.chat.display import (BAD, BOLD, DIM, FINAL, GOOD, NOT_UTF8, RESET, STRUCK, Painter, printable,
                                   readable_input)
from reasonlm.chat.session import load_session, save_session
from reasonlm.config import CHECKED_METHODS, SEARCH_METHODS, ChatConfig, ConfigError, SearchConfig, load_recipe
from reasonlm.detokenizer import Detokenizer
from reasonlm.engine import KVCacheEngine, SamplingParams, StreamResult, engine_for
from reasonlm.model import load_adapter
from reasonlm.stats import majority_vote
from reasonlm.tasks import question_families
from reasonlm.verdict import judge_question

# --- settings ----------------------------------------------------------------------------------


@dataclass
class Settings:
    """What /set changes during a session: the chat section's sampling settings (ChatConfig,
    validated there) and the seed."""
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: ChatConfig) -> Settings:
        return cls(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)


def _nonneg_float(s):
    v = float(s)
    if not v >= 0 or v == float("inf"):
        raise ValueError("expected a number >= 0")
    return v


def _top_p(s):
    v = float(s)
    if not 0 < v <= 1:
        raise ValueError("expected a number in (0, 1]")
    return v


def _pos_int(s):
    v = int(s)
    if v < 1:
        raise ValueError("expected a whole number >= 1")
    return v


def _int(s):
    return int(s)


PARSERS = {"temperature": _nonneg_float, "top_p": _top_p, "max_new_tokens": _pos_int, "seed": _int}


def parse_settings(text: str, current: Settings) -> Settings:
    """'temperature=0.7 top_p=0.9' -> new Settings; a bad item raises ValueError naming it."""
    values = {f.name: getattr(current, f.name) for f in fields(Settings)}
    items = text.replace(",", " ").split()
    if not items:
        raise ValueError("usage: /set key=value ... (keys: " + ", ".join(PARSERS) + ")")
    for item in items:
        key, eq, raw = item.partition("=")
        if key not in PARSERS:
            raise ValueError(f"unknown setting {key!r} (valid: {', '.join(PARSERS)})")
        if not eq or not raw:
            raise ValueError(f"{key}: missing value (write {key}=VALUE)")
        try:
            values[key] = PARSERS[key](raw)
        except ValueError as e:
            why = str(e) if str(e).startswith("expected") else "not a number"
            raise ValueError(f"bad value for {key}: {raw!r} ({why})") from None
    return Settings(**values)


def parse_search(method: str, items: list[str]) -> SearchConfig:
    """'/search step_retry retries=4 propose=sample' -> SearchConfig; a bad item raises ValueError."""
    names = {f.name for f in fields(SearchConfig)} - {"method"}
    values: dict = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if key not in names or not eq or not raw:
            raise ValueError(f"/search takes key=value settings ({', '.join(sorted(names))}), got {item!r}")
        for kind in (int, float, str):
            try:
                values[key] = kind(raw)
                break
            except ValueError:
                continue
    try:
        return SearchConfig(method=method, **values)
    except ConfigError as e:
        raise ValueError(str(e)) from None


# --- the context window ---------------------------------------------------------------------
class ContextError(ValueError):
    """A prompt that does not fit in the model's context window."""


# --- the session ------------------------------------------------------------------------------
HELP = {
    "/reset": "forget the conversation (keeps the system prompt and settings)",
    "/system": "TEXT  set the system prompt (no TEXT: remove it)",
    "/set": "key=value ...  temperature, top_p, max_new_tokens, seed (no args: show them)",
    "/greedy": "temperature=0: always the most likely token",
    "/samples": "K [QUESTION]  K sampled answers to the last (or a new) question, then the majority",
    "/verify": "check every step of the last answer with the task checker",
    "/search": "METHOD [key=value ...]  answer with " + ", ".join(SEARCH_METHODS)
               + " (checked from the question; greedy = off; settings as eval.search's)",
    "/save": "[--force] FILE  write the conversation as chat-messages JSONL (--force: replace FILE)",
    "/load": "FILE  continue a saved conversation",
    "/stats": "time to first token and tokens/s of the last answer",
    "/help": "this list",
    "/quit": "leave (Ctrl-D or Ctrl-C at an empty prompt too)",
}


@dataclass
class Turn:
    question: str
    history: list[dict]  # the history it was asked with
    reply: StreamResult | None = None  # None for a turn loaded from a file
    text: str = ""


@dataclass
class Chat:
    engine: KVCacheEngine
    tokenizer: object
    settings: Settings
    system: str = ""
    plain: bool = False
    out: object = field(default_factory=lambda: sys.stdout)
    history: list[dict] = field(default_factory=list)
    last: Turn | None = None
    sample_calls: int = 0
    search: SearchConfig = field(default_factory=SearchConfig)  # /search METHOD [key=value ...]

    def __post_init__(self):
        self.stream = self.engine.stream(self.settings.seed)
        self.context = self.engine.context_size

    def check_fits(self, prompt: list[int]):
        if self.context and len(prompt) >= self.context:
            raise ContextError(f"the prompt is {len(prompt)} tokens but the model's context is {self.context} "
                               f"tokens; shorten it (or /reset the history)")

    def budget(self, prompt: list[int]) -> int:
        """max_new_tokens, cut to what is left of the context after the prompt."""
        room = self.context - len(prompt) if self.context else self.settings.max_new_tokens
        return min(self.settings.max_new_tokens, room)

    def say(self, text: str = "", style: str = ""):
        text = printable(text)  # steps, answers and notes can quote the model's output
        self.out.write((text if self.plain or not style else style + text + RESET) + "\n")
        self.out.flush()

    def prompt_ids(self, question: str, history: list[dict]) -> list[int]:
        return encode_prompt(self.tokenizer, prompt_messages(question, self.system or None, history))

    # --- asking ---
    def ask(self, question: str, notes=None) -> Turn | None:
        """Stream an answer; the turn joins the history unless Ctrl-C stopped it."""
        notes = notes or self.say
        prompt = self.prompt_ids(question, self.history)
        self.check_fits(prompt)
        if self.search.method != "greedy":
            return self.ask_with_search(question, prompt, notes)
        painter = Painter(self.out, self.plain)
        stream = Detokenizer(self.tokenizer, painter.feed)
        params = SamplingParams(max_new_tokens=self.budget(prompt), temperature=self.settings.temperature,
                                top_p=self.settings.top_p)
        try:
            reply = self.stream.generate(prompt, params, stream.push)
        except KeyboardInterrupt:
            painter.close()
            notes("[interrupted; this turn is not kept]", BAD)
            return None
        stream.finish()
        painter.close()
        if not reply.tokens:
            notes("(empty answer)", DIM)
        if not reply.stopped:
            notes(f"[stopped at {len(reply.tokens)} tokens: max_new_tokens or the context limit]", DIM)
        text = self.tokenizer.decode(reply.tokens, skip_special_tokens=True)
        self.last = Turn(question, list(self.history), reply, text)
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": text}]
        return self.last

    def ask_with_search(self, question: str, prompt: list[int], notes) -> Turn | None:
        """Answer with the /search method, then show it line by line, each rejected line (struck
        through) before the line that replaced it."""
        checker = search.checker_for_question(question)
        try:
            search.check_methods(self.search.method, None if checker else "this question")
        except ValueError:
            notes(f"cannot {self.search.method}: nothing in this question can be checked; use /search majority", BAD)
            return None
        cfg = self.search
        self.sample_calls += 1
        problem = search.Problem(prompt, self.budget(prompt), self.settings.seed * 1000 + self.sample_calls, checker)
        try:
            [outcome] = search.run(self.engine, [problem], cfg, top_p=self.settings.top_p)
        except KeyboardInterrupt:
            notes("[interrupted; this turn is not kept]", BAD)
            return None
        text = self.tokenizer.decode(outcome.tokens, skip_special_tokens=True)
        rejected: dict[int, list[search.Rejected]] = {}
        for r in outcome.rejected:
            rejected.setdefault(r.step, []).append(r)
        painter = Painter(self.out, self.plain)
        for i, line in enumerate(text.split("\n"), 1):
            for r in rejected.pop(i, []):
                self.say(f"{r.text.rstrip()}   ({r.why})", STRUCK)
            painter.feed(line + "\n")
        for step in sorted(rejected):  # lines thrown away where the answer stopped
            for r in rejected[step]:
                self.say(f"{r.text.rstrip()}   ({r.why})", STRUCK)
        painter.close()
        notes(f"[{cfg.method}: {outcome.generated} tokens generated, {len(outcome.tokens)} kept, "
              f"{outcome.retried} lines resampled" + (f", {outcome.gave_up} could not be fixed" if outcome.gave_up else "")
              + "]", DIM)
        reply = StreamResult(tokens=list(outcome.tokens), prompt_tokens=len(prompt), stopped=True)
        self.last = Turn(question, list(self.history), reply, text)
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": text}]
        return self.last

    # --- commands ---
    def command(self, line: str) -> bool:
        """Run one /command; False means quit."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        handler = getattr(self, "cmd_" + name[1:], None) if name in HELP else None
        if name in ("/quit", "/exit"):
            return False
        if handler is None:
            self.say(f"unknown command {name!r}; commands: {' '.join(HELP)}", BAD)
            return True
        try:
            handler(arg)
        except ValueError as e:
            self.say(f"error: {e}", BAD)
        return True

    def cmd_help(self, arg):
        for name, text in HELP.items():
            self.say(f"  {name:<9} {text}")

    def cmd_reset(self, arg):
        self.history, self.last = [], None
        self.say("conversation cleared", DIM)

    def cmd_system(self, arg):
        self.system = arg
        self.say(f"system prompt set: {arg}" if arg else "system prompt removed", DIM)

    def cmd_set(self, arg):
        if arg:
            new = parse_settings(arg, self.settings)
            if new.seed != self.settings.seed:
                self.stream.reseed(new.seed)
            self.settings = new
        s = self.settings
        self.say(f"temperature={s.temperature} top_p={s.top_p} max_new_tokens={s.max_new_tokens} seed={s.seed}"
                 + ("  (greedy)" if s.temperature == 0 else ""), DIM)

    def cmd_greedy(self, arg):
        self.cmd_set("temperature=0")

    def cmd_search(self, arg):
        method, *items = arg.split() or [""]
        if method not in SEARCH_METHODS:
            raise ValueError(f"usage: /search METHOD [key=value ...] with METHOD one of {', '.join(SEARCH_METHODS)} "
                             f"(now: {self.search.method})")
        self.search = parse_search(method, items)
        self.say(f"answers now use {method}" + (" (checked from the question alone)" if method in CHECKED_METHODS else ""),
                 DIM)

    def cmd_stats(self, arg):
        r = self.last.reply if self.last else None
        if r is None:
            raise ValueError("no answer yet")
        self.say(f"time to first token {r.first_token_s:.3f} s, {r.tokens_per_s:.1f} tokens/s "
                 f"({len(r.tokens)} tokens in {r.total_s:.2f} s; prompt {r.prompt_tokens} tokens, "
                 f"{r.reused_tokens} reused from the cache)")

    def cmd_save(self, arg):
        force = arg.startswith("--force ")
        arg = arg.removeprefix("--force ").strip() if force else arg
        if not arg:
            raise ValueError("usage: /save [--force] FILE")
        if os.path.lexists(os.path.expanduser(arg)) and not force:
            raise ValueError(f"{arg} exists; /save --force {arg} replaces it (nothing was written)")
        try:
            n = save_session(os.path.expanduser(arg), self.system, self.history)
        except OSError as e:
            raise ValueError(f"cannot write {arg}: {e.strerror}") from None
        self.say(f"saved {n} messages to {arg}", DIM)

    def cmd_load(self, arg):
        if not arg:
            raise ValueError("usage: /load FILE")
        self.system, self.history = load_session(os.path.expanduser(arg))
        self.last = None
        if self.history:
            q, a = self.history[-2]["content"], self.history[-1]["content"]
            self.last = Turn(q, self.history[:-2], None, a)
        self.say(f"loaded {len(self.history) // 2} turns" + (" and a system prompt" if self.system else ""), DIM)

    def cmd_verify(self, arg):
        if self.last is None:
            raise ValueError("no answer to verify yet")
        result = judge_question(self.last.question, self.last.text)
        if result is None:
            raise ValueError("cannot verify: the question is not in the format of a task family I can check "
                             f"({', '.join(question_families())})")
        family, example, verdict = result
        parsed, check = verdict.parsed, verdict.check
        self.say(f"checked as {family}" + (f" (true answer {example.answer})" if example.answer else ""), DIM)
        if not parsed.steps:
            self.say("  no reasoning steps to check")
        for i, (step, ok) in enumerate(zip(parsed.steps, check.step_ok), 1):
            mark = "✓" if ok else "✗"
            first = "   <- first wrong step" if i == check.first_bad_step else ""
            self.say(f"  {mark} {i}. {step}{first}", GOOD if ok else BAD)
        if parsed.answer is None:
            self.say("  no final answer line ('#### N')", BAD)
        elif not example.answer:
            self.say(f"  answer {parsed.answer}: not checkable (the true answer is unknown for this family)")
        else:
            self.say(f"  answer {parsed.answer}: {'right' if check.answer_correct else 'wrong'}",
                     GOOD if check.answer_correct else BAD)
        if check.first_bad_step:
            self.say(f"first wrong step: {check.first_bad_step} of {len(parsed.steps)}", BAD)
        elif parsed.steps and check.chain_valid:
            self.say(f"all {len(parsed.steps)} steps check out and lead to the final answer", GOOD)
        elif parsed.steps:
            self.say(f"all {len(parsed.steps)} steps check out, but they do not reach "
                     f"{'the right' if example.answer else 'its'} final answer", DIM)

    def cmd_samples(self, arg):
        k_text, _, question = arg.partition(" ")
        try:
            k = int(k_text)
            assert 1 <= k <= 64
        except (ValueError, AssertionError):
            raise ValueError("usage: /samples K [QUESTION] with K in 1..64") from None
        question = question.strip()
        if question:
            history = self.history
        elif self.last:
            question, history = self.last.question, self.last.history
        else:
            raise ValueError("ask a question first (or /samples K QUESTION)")
        prompt = self.prompt_ids(question, history)
        self.check_fits(prompt)
        temperature = self.settings.temperature or 0.7
        self.say(f"sampling {k} answers at temperature {temperature}, top_p {self.settings.top_p} ...", DIM)
        self.sample_calls += 1  # fresh samples on every call, reproducible from the seed
        params = SamplingParams(max_new_tokens=self.budget(prompt), temperature=temperature, top_p=self.settings.top_p,
                                seed=self.settings.seed * 1000 + self.sample_calls, batch_size=k)
        try:
            outs = self.engine.generate([prompt] * k, params)
        except KeyboardInterrupt:
            self.say("[interrupted]", BAD)
            return
        answers = []
        for i, ids in enumerate(outs, 1):
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            parsed = parse_completion(text)
            answers.append(parsed.answer)
            found = judge_question(question, text)
            note = ""
            if found and parsed.steps:
                check = found[2].check
                note = (f"  (steps ok {sum(check.step_ok)}/{len(check.step_ok)}"
                        + (f", first wrong step {check.first_bad_step})" if check.first_bad_step else ")"))
            shown = f"{FINAL_MARK} {parsed.answer}" if parsed.answer is not None else "(no final answer)"
            self.say(f"  {i}. {shown}{note}", FINAL if parsed.answer is not None else DIM)
        # answer_key of '' is '': an empty final answer is no vote
        winner, votes = majority_vote(answers, key=lambda a: answer_key(a) or None)
        if winner is None:
            self.say(f"no majority: none of the {k} samples has a final answer", BAD)
        else:
            self.say(f"majority answer: {winner} ({votes} of {k} agree)", FINAL)


# --- entry points ------------------------------------------------------------------------------
def load(args):
    """(model, tokenizer) with transformers' chatter silenced; errors are one-line ModelErrors."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():  # deprecation notices from inside transformers/peft are not for users
        warnings.simplefilter("ignore", FutureWarning)
        device = load_recipe(args.recipe).device if args.recipe else "auto"  # the recipe's device, like eval
        return load_adapter(args.model, args.adapter, merged=args.merged, device=device)


def main(args):
    cfg = load_recipe(args.recipe).chat if args.recipe else ChatConfig()  # validated: a bad value is one line
    settings = Settings.from_config(cfg)
    one_shot = args.prompt is not None
    if not one_shot:
        print(f"loading {args.model}" + (f" + {args.adapter}" if args.adapter else "") + " ...", file=sys.stderr)
    model, tokenizer = load(args)
    plain = args.plain or one_shot or not sys.stdout.isatty()
    engine = engine_for(model, tokenizer)
    chat = Chat(engine, tokenizer, settings, system=cfg.system, plain=plain)
    if one_shot:
        question, replaced = readable_input(args.prompt)
        if replaced:
            print(NOT_UTF8, file=sys.stderr)
        chat.ask(question, notes=lambda text, style="": print(text, file=sys.stderr))
        return
    repl(chat, args)


def repl(chat: Chat, args):
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        readline = None
    if sys.stdin.isatty():
        # A process started from a background job (`cmd &` in a script, nohup, some launchers)
        # inherits SIGINT as ignored, and Python then never raises KeyboardInterrupt: Ctrl-C
        # would not stop an answer. At a terminal, Ctrl-C must work.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 reach readable_input, not a traceback
        sys.stdin.reconfigure(errors="surrogateescape")
    ctx = chat.context
    chat.say(f"reasonlm chat: {args.model}" + (f" + adapter {args.adapter}" + (" (merged)" if args.merged else "")
             if args.adapter else "") + (f", context {ctx} tokens" if ctx else "")
             + ". /help for commands, Ctrl-C stops an answer, Ctrl-D quits.", DIM)
    prompt = "you> " if chat.plain else f"\001{BOLD}\002you>\001{RESET}\002 "
    while True:
        try:
            line = input(prompt)
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            if readline is not None and readline.get_line_buffer().strip():
                print()  # Ctrl-C with text on the line: drop the line, keep going
                continue
            print()
            return
        line, replaced = readable_input(line.strip())
        if not line:
            continue
        if replaced:
            chat.say(NOT_UTF8, DIM)
        try:
            if line.startswith("/"):
                if not chat.command(line):
                    return
            else:
                chat.ask(line)
        except ContextError as e:
            chat.say(f"error: {e}", BAD)
        except KeyboardInterrupt:  # between tokens or in a command: back to the prompt
            chat.say("\n[interrupted]", BAD)
