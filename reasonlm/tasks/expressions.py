"""Safe arithmetic for checkable steps: a parser of + - * / expressions (parentheses, unary minus)
into exact trees, their values, and '12 * 3 = 36' checked. The task families' checkers use it
on model output, so it is written for untrusted input: no eval(), bounded sizes, nothing raises."""
from __future__ import annotations

import functools
import re
from fractions import Fraction

from reasonlm.answer import MAX_NUMBER_CHARS


_TOKEN_RE = re.compile(r"\d+(?:\.\d+)?|\S")  # a number, or any other single character
_OPS = {"+": "+", "-": "-", "−": "-", "*": "*", "×": "*", "x": "*", "/": "/", "÷": "/"}
# token text -> token: operators and parentheses (canonical), and the ten one-digit numbers
_BINARY = frozenset("+-*/")
_TOKENS = {**_OPS, "(": "(", ")": ")", **{str(d): d for d in range(10)}}
MAX_EXPR_CHARS = 200


def is_leaf(node) -> bool:
    """A parsed tree's leaf (an int or a Fraction), as opposed to an operation tuple or None."""
    return node is not None and type(node) is not tuple


@functools.lru_cache(maxsize=65536)  # the data stage checks the same small steps millions of times;
def parse_expression(expr: str):     # trees are tuples and numbers, immutable, so sharing them is safe
    """Parse an arithmetic expression (+ - * / parentheses, unary minus) into a tree.

    A leaf is an exact number: an int for an integer literal ('12'), a Fraction for a decimal
    one ('2.5', '2.0'); an operation is a tuple (op, left, right) with op in '+-*/'; unary minus
    on a literal folds into the leaf. Test for a leaf with `is_leaf` (not isinstance Fraction).
    Returns None for anything that is not such an expression. A hand-written recursive-descent
    parser: model output never meets eval().
    """
    expr = expr.replace(",", "").replace("$", "").strip()
    if not expr or len(expr) > MAX_EXPR_CHARS:
        return None
    tokens: list = []
    append = tokens.append
    for text in _TOKEN_RE.findall(expr):
        tok = _TOKENS.get(text)
        if tok is None:
            if not text[0].isdecimal():  # \d is exactly the decimal digits: anything else is no token of ours
                return None
            if len(text) > MAX_NUMBER_CHARS:
                return None
            tok = Fraction(text) if "." in text else int(text)  # ints are exact; '2.5' is not one
        append(tok)
    n = len(tokens)
    if n == 1:  # a bare number: the right-hand side of every step
        tok = tokens[0]
        return tok if type(tok) is not str else None
    if n == 3 and type(tokens[0]) is not str and type(tokens[2]) is not str and tokens[1] in _BINARY:
        return (tokens[1], tokens[0], tokens[2])  # 'a op b': the left-hand side of every step
    append(None)  # a sentinel: reading past the end meets None instead of an IndexError
    pos = 0

    # recursive descent, with the token reads inlined (this runs once per generated question)
    def expression(depth):
        nonlocal pos
        node = term(depth)
        while True:
            tok = tokens[pos]
            if tok != "+" and tok != "-":
                return node
            pos += 1
            node = (tok, node, term(depth))

    def term(depth):
        nonlocal pos
        node = factor(depth)
        while True:
            tok = tokens[pos]
            if tok != "*" and tok != "/":
                return node
            pos += 1
            node = (tok, node, factor(depth))

    def factor(depth):
        nonlocal pos
        if depth > 20:
            raise ValueError("nested too deep")
        tok = tokens[pos]
        pos += 1
        if type(tok) is str:
            if tok == "-":
                inner = factor(depth + 1)
                return -inner if type(inner) is not tuple else ("-", 0, inner)
            if tok == "(":
                node = expression(depth + 1)
                if tokens[pos] != ")":
                    raise ValueError("unbalanced")
                pos += 1
                return node
            raise ValueError("expected a number")
        if tok is None:
            raise ValueError("expected a number")
        return tok

    try:
        node = expression(0)
        return node if pos == n else None
    except (ValueError, IndexError):
        return None



def tree_value(node) -> Fraction | int | None:
    """Exact value of a parsed tree (an int when no division or decimal is involved); None on
    division by zero."""
    if type(node) is not tuple:
        return node
    op, left, right = node
    a = left if type(left) is not tuple else tree_value(left)
    b = right if type(right) is not tuple else tree_value(right)
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    if type(a) is int and type(b) is int:
        q, r = divmod(a, b)
        return q if r == 0 else Fraction(a, b)
    return Fraction(a) / b


def evaluate_expression(expr: str) -> Fraction | int | None:
    """Exact value of an arithmetic expression, or None if it is not one."""
    tree = parse_expression(expr)
    return None if tree is None else tree_value(tree)


EQUATION_RE = re.compile(r"^(?P<lhs>[^=]{1,200})=(?P<rhs>[^=]{1,60})$")


def check_equation(text: str) -> bool | None:
    """'12 * 3 = 36' -> True, '12 * 3 = 35' -> False, text without one equation -> None."""
    m = EQUATION_RE.match(text.strip())
    if not m:
        return None
    lhs, rhs = evaluate_expression(m.group("lhs")), evaluate_expression(m.group("rhs"))
    if lhs is None or rhs is None:
        return None
    return lhs == rhs
