"""GSM8K-format importer: grade-school word problems with calculator annotations.

A record (one JSON object per line, or a parquet row, or a Hub dataset row):
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as
                  many clips in May. How many clips did Natalia sell altogether?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n
                Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\\n#### 72"}
becomes the example
    steps:   Natalia sold 48/2=24 clips in May.
             Natalia sold 48+24=72 clips altogether in April and May.
    answer:  72        n_steps: 2 (the number of annotations)   meta: {"source", "line"}

Step text: every reasoning line of the answer is a step. In it, each
`[written expr =] [$]<<a op b=c>>c` becomes `a op b=c` (the annotation's own equation, no spaces,
'.5' written '0.5', 'x' written '*'); the written copy of the expression before it and the printed
result after it are dropped only when they repeat the annotation; the rest of the sentence is kept.
A line can hold zero or several annotations, so n_steps (annotations, the checkable equations) can
differ from len(steps).

Rejected and counted: `bad_annotation` (an annotation that is not a true equation by
expressions.check_equation, or a rewritten line our own checker does not accept), `final_mismatch`
(the `####` value differs from the last annotation's result), `malformed` (bad JSON, missing or
empty `question`/`answer`, no `####` line, no reasoning lines). `on_error="raise"` turns a
malformed record into a ValueError naming file:line instead (the default, 'skip', counts it).

Checking a solution (gold or model): every equation found in a line must be true (see
`find_equations`, which tolerates spaces, units, currency signs and 'x' for times), the last
equation's result must be the final answer, and the final answer must match. Lines without an
equation are accepted as prose.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

from reasonlm.answer import answers_match, format_number, normalize_number
from reasonlm.example import Example, text_lines
from reasonlm.tasks.base import Check, Importer, Rejected, check_on_error, finish_check, new_load_report
from reasonlm.tasks.expressions import MAX_EXPR_CHARS, check_equation, evaluate_expression, parse_expression, tree_value

ANNOTATION_RE = re.compile(r"<<([^<>]*)>>")
PRINTED_RESULT_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?")  # the result GSM8K prints after '>>'
LEADING_DOT_RE = re.compile(r"(?<![\d.])\.(?=\d)")  # '.5' -> '0.5' (answer.py's parser wants the 0)
MATH_CHARS = frozenset("0123456789.,$+-*/()x×÷ ")  # what a written copy of an annotation is made of
_CALCULATOR_OPS = str.maketrans({"x": "*", "×": "*", "÷": "/"})  # '3x4' in a step would read as algebra
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


class GSM8K(Importer):
    name = "gsm8k"
    license = "MIT (openai/gsm8k); local files keep their own license"

    def __init__(self, path: str = "openai/gsm8k", config: str = "main", split: str = "train", on_error: str = "skip"):
        if not isinstance(path, str) or not path:
            raise ValueError(f"path must be a local JSONL/parquet file or a Hub dataset id, got {path!r}")
        self.path, self.config, self.split, self.on_error = path, config, split, check_on_error(on_error)

    # --- loading ---------------------------------------------------------------------------
    def load(self) -> tuple[list[Example], dict]:
        """(examples, report). The report counts what was read, kept and rejected by reason."""
        report = new_load_report()
        examples = []
        for line, record, error in self._records():
            report["read"] += 1
            try:
                if error:
                    raise Rejected("malformed", error)
                examples.append(to_example(record, self.path, line))
            except Rejected as r:
                if r.kind == "malformed" and self.on_error == "raise":
                    raise ValueError(f"{self.path}:{line}: malformed record: {r.why}") from None
                report["rejected"][r.kind] += 1
        report["kept"] = len(examples)
        return examples, report

    def _records(self):
        """(line number, record or None, error or None) from a local file or the Hub."""
        if os.path.isfile(self.path):
            if self.path.endswith(".parquet"):
                import pyarrow.parquet as pq  # heavy, and only parquet files need it
                for i, row in enumerate(pq.read_table(self.path).to_pylist(), 1):
                    yield i, row, None
                return
            for i, text in text_lines(self.path):  # bytes that are not UTF-8: one error naming path:line
                if not text.strip():
                    continue
                try:
                    record = json.loads(text.strip())
                except json.JSONDecodeError as e:
                    yield i, None, f"not valid JSON ({e.msg} at column {e.colno})"
                    continue
                yield (i, record, None) if isinstance(record, dict) else (i, None, "not a JSON object")
            return
        if self.path.endswith(LOCAL_SUFFIXES) or self.path.startswith(("/", ".", "~")) or os.path.isdir(self.path):
            raise ValueError(f"{self.path}: no such file (expected a .jsonl or .parquet file, or a Hub dataset id)")
        for i, row in enumerate(_load_hub(self.path, self.config, self.split), 1):
            yield i, row, None

    # --- checking --------------------------------------------------------------------------
    def check(self, example: Example, steps: Sequence[str], answer: str | None) -> Check:
        return check_equation_steps(example, steps, answer)

    def gold_free(self, example: Example) -> str:
        return "calculator"  # worked solutions: the equations a model writes can be checked



def _load_hub(path: str, config: str, split: str):
    """Rows of a Hub dataset; any failure to get them is one clear line."""
    try:
        import datasets  # heavy (pyarrow, pandas), and only Hub ids need it
        rows = datasets.load_dataset(path, config, split=split)
    except Exception as e:  # offline, no network, unknown id/config/split: all end the same way
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ValueError(f"could not load {path!r} (config {config!r}, split {split!r}) from the Hugging Face Hub: "
                         f"{first}. Offline (HF_HUB_OFFLINE=1) or no network? Pass a local .jsonl/.parquet file "
                         f"instead.") from None
    yield from rows


def to_example(record: dict, source: str, line: int) -> Example:
    """One GSM8K record -> Example; raises Rejected(kind, why)."""
    question, answer = record.get("question"), record.get("answer")
    for key, value in (("question", question), ("answer", answer)):
        if not isinstance(value, str) or not value.strip():
            raise Rejected("malformed", f"missing or empty {key!r}")
    body, mark, final = answer.rpartition("####")
    final = final.strip()
    if not mark or not final:
        raise Rejected("malformed", "no '#### <answer>' line")
    steps, n_annotations, last = convert_lines(body)
    if not steps:
        raise Rejected("malformed", "no reasoning lines before '####'")
    value = normalize_number(final)
    gold = format_number(value) if value is not None else final
    if last is not None and value != last:
        raise Rejected("final_mismatch", f"'#### {final}' but the last annotation gives {format_number(last)}")
    example = Example(question.strip(), gold, tuple(steps), n_annotations, GSM8K.name,
                      meta={"source": source, "line": line})
    if not check_equation_steps(example, steps, gold).chain_valid:
        raise Rejected("bad_annotation", "the rewritten solution does not pass the checker")
    return example


def convert_lines(body: str):
    """Answer text before '####' -> (steps, number of annotations, last annotation's result)."""
    steps, count, last = [], 0, None
    for raw in body.splitlines():
        line = raw.strip()
        if not line:
            continue
        out, pos = [], 0
        for m in ANNOTATION_RE.finditer(line):
            equation = LEADING_DOT_RE.sub("0.", m.group(1)).replace(" ", "").translate(_CALCULATOR_OPS)
            if equation.count("=") != 1 or check_equation(equation) is not True:
                raise Rejected("bad_annotation", f"annotation <<{m.group(1)}>> is not a true equation")
            lhs, rhs = equation.split("=")
            out.append(_drop_written_copy(line[pos:m.start()], lhs))
            out.append(equation)
            pos = m.end()
            last = evaluate_expression(rhs)
            printed = PRINTED_RESULT_RE.match(line, pos)
            if printed and normalize_number(printed.group()) == last:
                pos = printed.end()
            count += 1
        out.append(line[pos:])
        steps.append("".join(out).strip())
    return steps, count, last


def _drop_written_copy(before: str, lhs: str) -> str:
    """'sold 48/2 = ' before <<48/2=24>> -> 'sold ': the annotation repeats the written expression.

    A trailing '=' (and '$') always goes, since the annotation brings its own; the math just
    before it goes only if it has the annotation's value."""
    head = before.rstrip(" $")
    if not head.endswith("="):
        return before.rstrip("$")
    head = head[:-1].rstrip()
    i = len(head)
    while i > 0 and head[i - 1] in MATH_CHARS:
        i -= 1
    written = LEADING_DOT_RE.sub("0.", head[i:].strip())
    if written and evaluate_expression(written) == evaluate_expression(lhs):
        head = head[:i]
    return head + " " if head and not head.endswith(" ") else head


# --- finding equations in free text (also used by the reasoning_gym importer) -----------------
# Solutions written by people or models put units and signs around their arithmetic:
#   '7 days/week * 5 weeks/month = 35 days/month', '53 x €13 = €689', 'so 0.8*100 = 80 students',
#   'Thus, T = 156 - 136 = 20 balls'.
# The line is cleaned of words, units and currency ('%' means /100, 'x'/'×' between things
# becomes *, a number glued to one letter like '2x' is algebra and marked '@', clause marks
# , ; : ! ? and full stops are marked '|') and split at '='. Each '=' compares the arithmetic at
# the end of the text before it (the longest tail that parses and starts at a seam: the line
# start, a clause mark, or two numbers side by side with no operator between) with the
# arithmetic at the start of the text after it (up to the first seam). Sides that are not
# arithmetic (algebra, words) and number-equals-number ('48=48') make no equation. The result
# reported is the number as written ('= 40%' gives 40, while 0.4 is what must be equal). Only
# linear regexes; nothing is evaluated but the parsed tree.
_BULLET_RE = re.compile(r"\s*[-•*]\s+")  # '- So 220 / 2 = 110': a list dash is not a minus sign
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3})")
_DIVIDE_BY_FRACTION_RE = re.compile(r"÷\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)")  # '14÷1/2' is 14/(1/2)
_VARIABLE_RE = re.compile(r"\d+(?:\.\d+)?[A-Za-z](?![A-Za-z])")  # '2x', '3y'
_TIMES_RE = re.compile(r"(?<![A-Za-z])[x×](?![A-Za-z])")
_HALF_RE = re.compile(r"\bhalf(?=\s*[*×x]\s)")  # 'half * 184'
_IMPLICIT_TIMES_RE = re.compile(r"(?<=\d)\s*\(")  # '2(83+37)'
_PER_UNIT_RE = re.compile(r"/\s*[A-Za-z]+")  # 'days/week' -> 'days'
_WORD_HYPHEN_RE = re.compile(r"-(?=[A-Za-z])")  # '5-day'
_PERCENT_RE = re.compile(r"(?<=\d)\s*%")  # kept as a token: '/100' when parsed
_CLAUSE_RE = re.compile(r"[,;:!?]|\.(?!\d)")
_NOT_MATH_RE = re.compile(r"[^0-9.+\-*/()=@|% ]")
_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?|[-+*/()@|%]")
MAX_LINE_CHARS = 2000
MAX_EQUATIONS = 50


def find_equations(line: str) -> list[tuple[bool, object]]:
    """[(is it true, its result as written, a Fraction)] for every checkable equation in a line."""
    text = line[:MAX_LINE_CHARS]
    bullet = _BULLET_RE.match(text)
    text = text[bullet.end():] if bullet else text
    text = _DIVIDE_BY_FRACTION_RE.sub(r"/(\1/\2)", text)
    text = text.replace("€", " ").replace("£", " ").replace("$", " ").replace("÷", "/").replace("−", "-")
    text = _THOUSANDS_RE.sub("", text)
    text = _VARIABLE_RE.sub(" @ ", text)
    text = _TIMES_RE.sub("*", _HALF_RE.sub("0.5", text))
    text = _IMPLICIT_TIMES_RE.sub("*(", text)
    text = _PER_UNIT_RE.sub(" ", text)
    text = _WORD_HYPHEN_RE.sub(" ", text)
    text = _PERCENT_RE.sub(" % ", text)
    text = _CLAUSE_RE.sub(" | ", text)
    text = _NOT_MATH_RE.sub(" ", text)
    segments = text.split("=", MAX_EQUATIONS)
    found = []
    for before, after in zip(segments, segments[1:]):
        right, percent = _arithmetic_head(_TOKEN_RE.findall(after[:MAX_EXPR_CHARS]))
        left = _arithmetic_tail(_TOKEN_RE.findall(before[-MAX_EXPR_CHARS:])) if right is not None else None
        if left is None or (not isinstance(left, tuple) and not isinstance(right, tuple)):
            continue
        value, claimed = tree_value(left), tree_value(right)
        if claimed is not None:
            found.append((value is not None and value == claimed, claimed * 100 if percent else claimed))
    return found


def _is_operand_end(tok: str) -> bool:
    return tok[0].isdigit() or tok == ")" or tok == "%"


def _parse(tokens: list[str]):
    return parse_expression(" ".join(tokens).replace("%", "/100"))


def _arithmetic_tail(tokens: list[str]):
    """The longest parseable tail of the tokens that starts at a seam, or None."""
    if "|" in tokens:
        tokens = tokens[len(tokens) - tokens[::-1].index("|"):]
    for i, tok in enumerate(tokens):
        starts = tok[0].isdigit() or tok == "(" or (tok == "-" and i == 0)
        if starts and (i == 0 or _is_operand_end(tokens[i - 1])):
            tree = _parse(tokens[i:])
            if tree is not None:
                return tree
    return None


def _arithmetic_head(tokens: list[str]):
    """(the longest parseable head of the tokens up to the first seam, does it end in '%')."""
    end = len(tokens)
    for j, tok in enumerate(tokens):
        if tok in ("|", "@") or (j and (tok[0].isdigit() or tok == "(") and _is_operand_end(tokens[j - 1])):
            end = j
            break
    for j in range(end, 0, -1):
        tree = _parse(tokens[:j])
        if tree is not None:
            return tree, tokens[j - 1] == "%"
    return None, False


def check_equation_steps(example: Example, steps: Sequence[str], answer: str | None) -> Check:
    """Every equation true; the last one's result is the final answer; the answer matches."""
    step_ok, last = [], None
    for text in steps:
        equations = find_equations(text)
        step_ok.append(all(ok for ok, _ in equations))
        if equations:
            last = equations[-1][1]
    complete = bool(steps) and (last is None or answers_match(answer, format_number(last)))
    return finish_check(answers_match(answer, example.answer), step_ok, complete)


# --- a small fixture written for this project (GSM8K style, not GSM8K data) -------------------
FIXTURE_RECORDS = [
    {"question": "Lena picked 36 strawberries on Monday and half as many on Tuesday. How many strawberries did she pick in total?",
     "answer": "On Tuesday she picked 36/2 = <<36/2=18>>18 strawberries.\nIn total she picked 36+18 = <<36+18=54>>54 strawberries.\n#### 54"},
    {"question": "A bakery sells muffins for $3 each. It sold 45 muffins on Saturday and 30 muffins on Sunday. How much money did the bakery make from muffins over the weekend?",
     "answer": "The bakery sold 45+30 = <<45+30=75>>75 muffins.\nIt made 75*3 = $<<75*3=225>>225.\n#### 225"},
    {"question": "Tom has 120 marbles. He gives a quarter of them to his sister and then buys 15 more. How many marbles does Tom have now?",
     "answer": "He gives away 120/4 = <<120/4=30>>30 marbles.\nHe has 120-30 = <<120-30=90>>90 marbles left.\nAfter buying more he has 90+15 = <<90+15=105>>105 marbles.\n#### 105"},
    {"question": "A car uses 8 liters of fuel for every 100 kilometers. How many liters does it use on a 350 kilometer trip?",
     "answer": "The trip is 350/100 = <<350/100=3.5>>3.5 hundreds of kilometers.\nThe car uses 3.5*8 = <<3.5*8=28>>28 liters.\n#### 28"},
    {"question": "Maya buys 4 notebooks at $2.50 each and a pen for $1.25. How much does she spend?",
     "answer": "The notebooks cost 4*2.5 = $<<4*2.5=10>>10.\nShe spends 10+1.25 = $<<10+1.25=11.25>>11.25 in total.\n#### 11.25"},
    {"question": "A farmer has 6 rows of apple trees with 14 trees in each row. He plants 9 more trees. How many apple trees does he have now?",
     "answer": "He has <<6*14=84>>84 trees in the rows.\nAfter planting he has <<84+9=93>>93 trees.\n#### 93"},
    {"question": "A jacket costs $80. It is on sale for 25% off. What is the sale price of the jacket?",
     "answer": "The discount is 80*25/100 = $<<80*25/100=20>>20.\nThe sale price is 80-20 = $<<80-20=60>>60.\n#### 60"},
    {"question": "Sam works 30 hours at $15 an hour and saves 20% of what he earns. How much does he save?",
     "answer": "He earns 30*15 = $<<30*15=450>>450.\nHe saves 450*.2 = $<<450*.2=90>>90.\n#### 90"},
    {"question": "Ava has 3 packs of 8 stickers and 2 packs of 5 stickers. How many stickers does she have?",
     "answer": "The big packs hold 3*8 = <<3*8=24>>24 stickers and the small packs hold 2*5 = <<2*5=10>>10 stickers.\nShe has 24+10 = <<24+10=34>>34 stickers.\n#### 34"},
    {"question": "A train leaves at 2 pm and travels 240 km at 80 km per hour. At what hour in the afternoon does it arrive?",
     "answer": "The trip takes 240/80 = <<240/80=3>>3 hours.\nIt leaves at 2 pm.\nIt arrives at 2+3 = <<2+3=5>>5 pm.\n#### 5"},
    {"question": "A school raised $1,200 in the morning and $850 in the afternoon. It spends $1,500 on books. How much money is left?",
     "answer": "It raised 1200+850 = $<<1200+850=2050>>2,050.\nAfter buying books it has 2050-1500 = $<<2050-1500=550>>550 left.\n#### 550"},
    {"question": "Noah reads 18 pages a day. How many days does he need to finish a 252-page book?",
     "answer": "He needs 252/18 = <<252/18=14>>14 days.\n#### 14"},
]
# broken on purpose: a wrong annotation, a final line that disagrees, bad JSON, a missing key
FIXTURE_BROKEN_LINES = [
    json.dumps({"question": "Kim buys 7 boxes of 6 eggs. How many eggs does she buy?",
                "answer": "She buys 7*6 = <<7*6=43>>43 eggs.\n#### 43"}),
    json.dumps({"question": "Leo has 25 cards and gives away 9. How many cards are left?",
                "answer": "He has 25-9 = <<25-9=16>>16 cards left.\n#### 17"}),
    '{"question": "A broken record", "answer": "1+1 = <<1+1=2>>2\\n#### 2"',
    json.dumps({"question": "Where is the answer?"}),
]


def write_fixture(path: str) -> str:
    """Write the GSM8K-format test fixture: 12 good records, then 4 broken lines (13-16)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in FIXTURE_RECORDS:
            f.write(json.dumps(record) + "\n")
        for line in FIXTURE_BROKEN_LINES:
            f.write(line + "\n")
    return path
