"""The Example record: one problem with its gold solution, as every stage sees it.

A task family makes Examples, the data stage writes them as rows, training renders their target,
eval and RL check model output against them. There is one way to a row and back:

    row = example.to_row()          # what the dataset files hold (meta as a JSON string: arrow
                                    # needs one column type, and every family's meta differs)
    example = Example.from_row(row) # any dict with question and answer; meta as dict or JSON

and one way to the text a model is trained to write: `render_target(example, "cot" | "direct")`.
`question_key` is the one rule for "the same question" (de-duplication, decontamination,
exemplars). Reading a dataset written by the data stage is `read_dataset(path)`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from reasonlm.answer import render_completion

FORMATS = ("cot", "direct")


class ExampleError(ValueError):
    """A row that is not a problem (missing question or answer, bad steps), as one line."""


@dataclass(frozen=True)
class Example:
    question: str
    """What the model is asked."""
    answer: str
    """The gold final answer (as written after '####')."""
    steps: tuple[str, ...] = ()
    """The gold reasoning, one checkable step per entry (empty for answer-only problems)."""
    n_steps: int = 0
    """Reasoning steps the problem needs (its difficulty); 0 = unknown."""
    family: str = ""
    """The task family whose checker judges this problem (arithmetic, gsm8k, ...)."""
    id: str = ""
    """Stable identifier within its split or source."""
    meta: dict = field(default_factory=dict)
    """Whatever the family's checker needs beyond the question (including its knobs): JSON-serialisable."""

    @classmethod
    def from_row(cls, row: dict, default_id: str = "", default_family: str = "") -> "Example":
        """An Example from a dataset row or a JSON record (meta as a dict or a JSON string)."""
        if not isinstance(row, dict) or "question" not in row or "answer" not in row:
            raise ExampleError("a problem needs 'question' and 'answer'")
        meta = row.get("meta") or {}
        if isinstance(meta, str):
            try:
                meta = json.loads(meta) if meta.strip() else {}
            except ValueError:
                raise ExampleError(f"meta is not JSON: {meta[:60]!r}") from None
        if not isinstance(meta, dict):
            raise ExampleError(f"meta must be a mapping, got {type(meta).__name__}")
        steps = row.get("steps") or []
        if isinstance(steps, str) or not isinstance(steps, (list, tuple)):
            raise ExampleError(f"steps must be a list of strings, got {type(steps).__name__}")
        return cls(question=str(row["question"]), answer=str(row["answer"]), steps=tuple(str(s) for s in steps),
                   n_steps=int(row.get("n_steps") or 0), family=str(row.get("family") or default_family),
                   id=str(row.get("id") or default_id), meta=meta)

    def to_row(self) -> dict:
        """The dataset row: every column a plain type, meta as canonical JSON ('{}' when empty)."""
        return {"id": self.id, "family": self.family, "question": self.question, "steps": list(self.steps),
                "answer": self.answer, "n_steps": self.n_steps,
                "meta": json.dumps(self.meta, sort_keys=True) if self.meta else "{}"}


def render_target(example: Example, fmt: str) -> str:
    """The completion a model is trained to write: 'cot' = every step then '#### answer',
    'direct' = the answer line alone (the ablation)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return render_completion(list(example.steps) if fmt == "cot" else [], example.answer)


# --- question keys: what counts as the same question --------------------------------------------
NOT_MATH_RE = re.compile(r"[^\w+\-*/=.() ]")  # punctuation other than arithmetic: folded to a space
SENTENCE_DOT_RE = re.compile(r"\.(?!\d)|(?<!\d)\.")  # a dot that is not a decimal point
MATH_SPACE_RE = re.compile(r"\s*([+\-*/=()])\s*")  # '3 + 4' is '3+4'
SPACES_RE = re.compile(r"\s+")
PLAIN_MATH = "0123456789+-*/()"  # a question of only these characters is already normalized


def question_key(q: str) -> str:
    """Key for de-duplication and decontamination: case, spacing and punctuation folded."""
    if not q.strip(PLAIN_MATH):  # '(7+5)*3-4': nothing to fold, it is its own key
        return q
    return fold_question(q)


def fold_question(q: str) -> str:
    """question_key without its short cut (the rules themselves)."""
    q = SENTENCE_DOT_RE.sub(" ", NOT_MATH_RE.sub(" ", q.casefold()))
    return SPACES_RE.sub(" ", MATH_SPACE_RE.sub(r"\1", q)).strip()


# --- reading what the data stage wrote ------------------------------------------------------------
def read_dataset(path: str):
    """The DatasetDict the data stage wrote at `path`, with a one-line error if it is not there."""
    from datasets import load_from_disk  # heavy (pyarrow, pandas): only stages that read a dataset pay for it
    if not os.path.isdir(path):
        raise ExampleError(f"dataset not found: {path} (run `reasonlm data RECIPE` first)")
    try:
        return load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise ExampleError(f"{path} is not a dataset written by `reasonlm data`: {str(e).splitlines()[0]}") from None



# --- token budgets: how long an answer may run ----------------------------------------------------
# From the question alone, never from the gold solution: an answer-only problem has none, and a
# budget sized by it would cut every chain off mid-step. Each number or operator in a question is
# work to show (arithmetic's rewrite chains grow with both), and wordy questions get wordy
# solutions. The rule leaves every family's gold solutions room to spare (the ratios are in
# docs/experiments.md, "Answer budgets").
BUDGET_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
BUDGET_OPERATOR_RE = re.compile(r"[-+*/×÷=^%<>]")


def question_budget(tokenizer, question: str) -> int:
    """Tokens an answer to `question` may take: 64 + 16 per number or operator in the question +
    3 per token of it."""
    work = len(BUDGET_NUMBER_RE.findall(question)) + len(BUDGET_OPERATOR_RE.findall(question))
    return 64 + 16 * work + 3 * len(tokenizer(question, add_special_tokens=False)["input_ids"])


def answer_budget(tokenizer, question: str, prompt_tokens: int, context: int | None, max_new_tokens: int = 0) -> int:
    """The budget eval and training's val_accuracy give one answer: `max_new_tokens` when set, else
    `question_budget`, cut to the model's context left after the prompt (at least 1 token)."""
    budget = max_new_tokens or question_budget(tokenizer, question)
    return max(1, min(budget, context - prompt_tokens)) if context else budget


# --- reading text files a user gives (JSONL problems, GSM8K files, blocklists, sessions) ---------
def text_lines(path: str):
    """(line number, line) of a UTF-8 text file. Bytes that are not UTF-8 stop the reading with
    one ExampleError naming the file and the line (a newline byte is never inside a UTF-8
    character, so every line decodes on its own)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ExampleError(f"{path}:{n}: not UTF-8 text") from None


def check_unicode(value, where: str) -> None:
    """A parsed record (JSON) whose text holds a lone surrogate (a `\\ud800` escape: not Unicode
    text, and nothing can encode it, so it would fail far from here) is one ExampleError naming
    `where` (file:line)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ExampleError(f"{where}: not Unicode text (a lone surrogate {value[e.start]!r} at character "
                               f"{e.start + 1})") from None
    elif isinstance(value, dict):
        for v in (*value.keys(), *value.values()):
            check_unicode(v, where)
    elif isinstance(value, list):
        for v in value:
            check_unicode(v, where)
