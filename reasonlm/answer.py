"""The one answer format: how a solution is written, and how it is read back.

Every stage goes through this file: the data stage renders gold solutions with
`render_completion`, the trainer and the evaluator turn a question into tokens with
`encode_prompt` / `encode_example`, and the evaluator and the chat REPL read model output
with `parse_completion`. Keeping both directions here is what prevents the classic
train/inference prompt mismatch.

A completion is the reasoning, one step per line, then a final-answer line in the GSM8K
convention:

    8+1=9
    9-5=4
    #### 4

Everything that reads model output here is written for untrusted input: no `eval`, linear
regexes only, bounded number sizes, and nothing raises.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fractions import Fraction

FINAL_MARK = "####"
MAX_NUMBER_CHARS = 40  # longer "numbers" in model output are treated as garbage, not parsed

# --- extraction rules (in plain view, as lm-evaluation-harness keeps them) ------------------
# strict: our own final-answer line. The first "####" wins; text after it is ignored.
STRICT_RE = re.compile(r"####[ \t]*([^\n]*)")
# flexible: the last number-like token anywhere in the output.
NUMBER_RE = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
# lm-evaluation-harness gsm8k, verbatim, so scores are comparable with published ones.
LMEVAL_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
LMEVAL_FLEXIBLE_RE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
INVALID = "[invalid]"


def normalize_number(text: str | None) -> Fraction | None:
    """'1,234' '$12' '12.' '12.0' '3/4' '-0.50' -> an exact Fraction; anything else -> None."""
    if text is None:
        return None
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "")
    s = s.rstrip(".")
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            if not _is_decimal(num) or not _is_decimal(den):
                return None
            d = Fraction(den)
            return Fraction(num) / d if d != 0 else None
        if not _is_decimal(s):
            return None
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _is_decimal(s: str) -> bool:
    s = s[1:] if s[:1] in "+-" else s
    if not s or s.count(".") > 1:
        return False
    return s.replace(".", "", 1).isdigit()


def format_number(value: Fraction | int) -> str:
    """Canonical text of a number: '12', '-3', '2.5', or '1/3' when no finite decimal exists."""
    if isinstance(value, int):  # the common case (the data stage's ints), no conversion at all
        return str(int(value))
    if value.denominator == 1:
        return str(value.numerator)
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den == 1:  # finite decimal
        text = f"{float(value):.10f}".rstrip("0").rstrip(".")
        if Fraction(text) == value:
            return text
    return f"{value.numerator}/{value.denominator}"


def answers_match(predicted: str | None, gold: str) -> bool:
    """Numbers compare by value; anything else compares as stripped, case-folded text."""
    if predicted is None:
        return False
    if predicted == gold:  # the same text is the same number (or the same text): no parsing needed
        return True
    p, g = normalize_number(predicted), normalize_number(gold)
    if g is not None:
        return p is not None and p == g
    return answer_text_key(predicted) == answer_text_key(gold)


def answer_text_key(answer: str) -> str:
    """How a non-numeric answer compares: stripped, without a trailing dot, case-folded."""
    return answer.strip().rstrip(".").casefold()


def answer_key(answer: str):
    """The one answer-normalising rule, as a hashable key (votes, majorities): numbers by value
    ('12' == '12.0' == '$12', written canonically), anything else by `answer_text_key`."""
    value = normalize_number(answer)
    return format_number(value) if value is not None else answer_text_key(answer)


# --- writing ---------------------------------------------------------------------------------
def render_completion(steps: list[str], answer: str) -> str:
    """Gold completion text: one step per line, then '#### answer'. Empty steps = direct answer."""
    return "\n".join([*steps, f"{FINAL_MARK} {answer}"])


# --- reading ---------------------------------------------------------------------------------
@dataclass
class Parsed:
    steps: list[str] = field(default_factory=list)
    answer: str | None = None  # strict: from the final-answer line, or None if there is none
    flexible: str | None = None  # the last number-like token of the whole output


def parse_completion(text: str) -> Parsed:
    """Split model output into reasoning steps and the final answer. Never raises."""
    text = text or ""
    m = STRICT_RE.search(text)
    body = text[: m.start()] if m else text
    steps = [line.strip() for line in body.splitlines() if line.strip()]
    answer = m.group(1).strip() if m else None
    if answer == "":
        answer = None
    return Parsed(steps=steps, answer=answer, flexible=last_number(text))


def last_number(text: str) -> str | None:
    last = None
    for last in NUMBER_RE.finditer(text):
        pass
    if last is None:
        return None
    token = last.group(0)
    return token if len(token) <= MAX_NUMBER_CHARS else None


def lmeval_strict(text: str) -> str:
    """lm-evaluation-harness gsm8k 'strict-match': first '#### N', else '[invalid]'."""
    m = LMEVAL_STRICT_RE.search(text)
    return m.group(1) if m else INVALID


def lmeval_flexible(text: str) -> str:
    """lm-evaluation-harness gsm8k 'flexible-extract': the last match of its regex."""
    matches = LMEVAL_FLEXIBLE_RE.findall(text)
    if not matches:
        return INVALID
    a, b = matches[-1]
    return a or b


def lmeval_normalize(text: str) -> str:
    """lm-eval's scoring filters: drop ',', '$', a leading '...#### ' and a trailing '.'."""
    text = text.casefold()
    i = text.rfind("#### ")
    if i >= 0:
        text = text[i + 5:]
    text = text.replace(",", "").replace("$", "")
    text = text[:-1] if text.endswith(".") else text  # exactly one, as the harness's regex "\\.$"
    return text.strip()


# --- the chat rendering shared by training, eval and chat ------------------------------------
def prompt_messages(question: str, system: str | None = None, history: list[dict] | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + list(history or []) + [{"role": "user", "content": question}]


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text the model sees before it answers (chat template + generation prompt)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def end_of_turn(tokenizer) -> str:
    """The text the chat template puts right after an assistant message (e.g. '<|im_end|>').

    Training appends it to every completion so the model learns to stop (a model that never
    emits its end-of-turn token after fine-tuning is a known LoRA failure).
    """
    mark = "\x00REASONLM\x00"
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}]
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    suffix = full[full.index(mark) + len(mark):]
    for tok in tokenizer.all_special_tokens:
        if suffix.startswith(tok):
            return tok
    return suffix.strip() or (tokenizer.eos_token or "")


def stop_token_ids(tokenizer) -> set[int]:
    """Token ids that end an answer: the chat template's end-of-turn token and EOS."""
    ids = {tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return {i for i in ids if isinstance(i, int) and i >= 0}


def pad_token_id(tokenizer) -> int:
    """The id rows are padded with: the tokenizer's pad token, 0 without one (padding is masked, or
    sits after every real token under causal attention, so its value never reaches an output)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def cut_at_stop(text: str, stop_strings) -> str:
    """The text before the first stop string (the engine keeps it in the output; scoring must not)."""
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return text[:min(cuts)] if cuts else text


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, question: str, completion: str, system: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids incl. end-of-turn). The prompt part is exactly what
    `encode_prompt` gives at eval and chat time, so the model is trained on what it sees."""
    prompt = encode_prompt(tokenizer, prompt_messages(question, system))
    completion_ids = tokenizer(completion + end_of_turn(tokenizer), add_special_tokens=False)["input_ids"]
    return prompt, completion_ids
