"""The word-problem catalogue: the story builder, the base templates and the stages that continue
a story (the data tables of tasks/word_problems.py, which says how they combine into a problem).

A template appends facts to the question and exactly its own solution lines, records every number
it states (or relies on: 100 for percent, 60 minutes, ...) as given, and raises Retry when its
draws break a bound; the family then starts the problem over.
"""
from __future__ import annotations

import random
from fractions import Fraction

from reasonlm.answer import format_number

NAMES = [("Mia", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Zoe", "she"), ("Omar", "he"),
         ("Priya", "she"), ("Ken", "he"), ("Sara", "she"), ("Leo", "he"), ("Nina", "she"), ("Ravi", "he")]
ITEMS = [("apple", "apples"), ("pencil", "pencils"), ("marble", "marbles"), ("sticker", "stickers"),
         ("cookie", "cookies"), ("card", "cards"), ("shell", "shells"), ("balloon", "balloons"),
         ("stamp", "stamps"), ("orange", "oranges"), ("button", "buttons"), ("crayon", "crayons")]
THINGS = ["lunch", "a book", "a movie ticket", "a gift", "snacks", "bus fares"]
ACTIVITIES = ["reading", "cleaning", "practising", "walking the dog"]
PERCENTS = [5, 10, 15, 20, 25, 30, 40, 50, 75]
BILLS = [5, 10, 20, 50, 100, 200, 500, 1000]
RELATIVES = ["aunt", "uncle", "cousin", "grandmother", "neighbour"]
DISTRACTORS = [
    "{F} is {k} years old.",
    "The shop is {k} blocks from {his} house.",
    "{F} has {k} {other}.",
    "It is {k} degrees outside.",
    "{N}'s {rel} lives {k} kilometers away.",
]


class Retry(Exception):
    """A draw broke a constraint (inexact division, result out of bounds): start the problem over."""


def money(v) -> str:
    """Money as the question writes it: '$12' or '$2.50'."""
    v = Fraction(v)
    return f"${v.numerator}" if v.denominator == 1 else f"${v.numerator / v.denominator:.2f}"


class Story:
    """The problem being built: who it is about, the facts, the solution lines, the given numbers."""

    def __init__(self, rng: random.Random, max_number: int, max_result: int):
        self.rng, self.max_number, self.max_result = rng, max_number, max_result
        (self.N, pro), (self.F, _) = rng.sample(NAMES, 2)
        self.she, self.She = pro, pro.capitalize()
        self.her, self.his = ("her", "her") if pro == "she" else ("him", "his")
        self.sing, self.pl = rng.choice(ITEMS)
        self.facts: list[str] = []
        self.steps: list[str] = []
        self.question = ""
        self.given: dict = {}  # value -> None, in order of appearance (a dict is an ordered set)

    # numbers that appear in the question (or that a template uses implicitly) are "given"
    def num(self, v) -> str:
        self.given[v] = None
        return format_number(v)

    def cash(self, v) -> str:
        self.given[v] = None
        return money(v)

    def n(self, lo: int = 2, hi: int | None = None) -> int:
        hi = self.max_number if hi is None else min(hi, self.max_number)
        if hi < lo:
            raise Retry
        return self.rng.randint(lo, hi)

    def price(self):
        """A price in dollars: whole dollars half the time, else a multiple of 25 cents."""
        if self.rng.random() < 0.5:
            return self.n(1)
        return Fraction(self.rng.randint(1, 4 * self.max_number), 4)

    def pct(self) -> int:
        return self.rng.choice(PERCENTS)

    def calc(self, a, op: str, b, money: bool = False) -> tuple[str, object]:
        """'a op b=c' and c. '%' means b percent of a, written 'a*b/100=c'. The result must be
        positive, within max_result, and whole (cents for money), else the problem is redrawn."""
        if op == "+":
            r = a + b
        elif op == "-":
            r = a - b
        elif op == "*":
            r = a * b
        elif op == "/":
            r = Fraction(a) / b
        else:
            self.given[100] = None
            r = Fraction(a) * b / 100
        r = Fraction(r)
        if r <= 0 or r > self.max_result or (r * 100 if money else r).denominator != 1:
            raise Retry
        r = r.numerator if r.denominator == 1 else r
        lhs = f"{format_number(a)}*{format_number(b)}/100" if op == "%" else f"{format_number(a)}{op}{format_number(b)}"
        return f"{lhs}={format_number(r)}", r

    def divisor(self, v, lo: int = 2, hi: int = 12) -> int:
        """A whole number in [lo, hi] that divides v (for exact sharing), or redraw."""
        hi = min(hi, self.max_number)
        options = [d for d in range(lo, hi + 1) if v % d == 0 and v != d]
        if not options:
            raise Retry
        return self.rng.choice(options)


# --- base templates ---------------------------------------------------------------------------
# Each appends facts and steps, sets the question, and returns (kind, value, (singular, plural))
# of its result. The table after them records steps and whether a story can continue.

def _boxes(s):
    a, b = s.n(2, 12), s.n(2, 12)
    e, r = s.calc(a, "*", b)
    s.facts += [f"{s.N} buys {s.num(a)} boxes of {s.pl}.", f"Each box holds {s.num(b)} {s.pl}."]
    s.steps += [f"Each box holds {b} {s.pl}, so {a} boxes hold {e} {s.pl}."]
    s.question = f"How many {s.pl} does {s.N} buy?"
    return "items", r, (s.sing, s.pl)


def _give_away(s):
    a = s.n(5)
    b = s.n(1, a - 1)
    e, r = s.calc(a, "-", b)
    s.facts += [f"{s.N} has {s.num(a)} {s.pl}.", f"{s.She} gives {s.num(b)} {s.pl} to {s.F}."]
    s.steps += [f"{s.N} gives away {b} {s.pl}, so {s.she} has {e} {s.pl} left."]
    s.question = f"How many {s.pl} does {s.N} have left?"
    return "items", r, (s.sing, s.pl)


def _gift(s):
    a, b = s.n(), s.n()
    e, r = s.calc(a, "+", b)
    s.facts += [f"{s.N} has {s.num(a)} {s.pl}.", f"{s.F} gives {s.her} {s.num(b)} more {s.pl}."]
    s.steps += [f"{s.N} gets {b} more, so {s.she} has {e} {s.pl}."]
    s.question = f"How many {s.pl} does {s.N} have now?"
    return "items", r, (s.sing, s.pl)


def _share(s):
    b, each = s.n(2, 9), s.n(2)
    a = b * each
    e, r = s.calc(a, "/", b)
    s.facts += [f"{s.N} shares {s.num(a)} {s.pl} equally among {s.num(b)} friends."]
    s.steps += [f"Each friend gets {e} {s.pl}."]
    s.question = f"How many {s.pl} does each friend get?"
    return "share", r, None


def _half(s):
    a = 2 * s.n(1, s.max_number // 2)
    e, r = s.calc(a, "/", 2)
    s.num(2)
    s.facts += [f"{s.N} has {s.num(a)} {s.pl} and gives half of them to {s.F}."]
    s.steps += [f"{s.N} keeps half, so {s.she} has {e} {s.pl}."]
    s.question = f"How many {s.pl} does {s.N} have now?"
    return "items", r, (s.sing, s.pl)


def _garden(s):
    a, b = s.n(2, 12), s.n(2, 12)
    e1, r1 = s.calc(a, "*", b)
    c = s.n(1, r1 - 1)
    e2, r2 = s.calc(r1, "-", c)
    s.facts += [f"{s.N}'s garden has {s.num(a)} rows of tulips with {s.num(b)} tulips in each row.",
                f"{s.num(c)} of the tulips die."]
    s.steps += [f"There are {e1} tulips.", f"After {c} die, {s.N} has {e2} tulips left."]
    s.question = f"How many tulips does {s.N} have left?"
    return "items", r2, ("tulip", "tulips")


def _times_as_many(s):
    a, b = s.n(), s.n(2, 6)
    e1, r1 = s.calc(a, "*", b)
    e2, r2 = s.calc(a, "+", r1)
    s.facts += [f"{s.N} has {s.num(a)} {s.pl}.", f"{s.F} has {s.num(b)} times as many {s.pl} as {s.N}."]
    s.steps += [f"{s.F} has {e1} {s.pl}.", f"Together they have {e2} {s.pl}."]
    s.question = f"How many {s.pl} do {s.N} and {s.F} have together?"
    return "together", r2, None


def _fewer_than(s):
    a = s.n(4)
    b = s.n(1, a - 1)
    e1, r1 = s.calc(a, "-", b)
    e2, r2 = s.calc(a, "+", r1)
    s.facts += [f"{s.N} has {s.num(a)} {s.pl}.", f"{s.F} has {s.num(b)} fewer {s.pl} than {s.N}."]
    s.steps += [f"{s.F} has {e1} {s.pl}.", f"Together they have {e2} {s.pl}."]
    s.question = f"How many {s.pl} do {s.N} and {s.F} have together?"
    return "together", r2, None


def _dozen(s):
    a = s.n(1, 6)
    e1, r1 = s.calc(a, "*", 12)
    b = s.n(1, r1 - 1)
    e2, r2 = s.calc(r1, "-", b)
    s.num(12)
    s.facts += [f"{s.N} bakes {s.num(a)} dozen cookies and eats {s.num(b)} of them."]
    s.steps += [f"A dozen is 12, so {a} dozen is {e1} cookies.", f"After eating {b}, {s.N} has {e2} cookies left."]
    s.question = f"How many cookies does {s.N} have left?"
    return "items", r2, ("cookie", "cookies")


def _reading(s):
    b, c = s.n(2, 30), s.n(2, 9)
    e1, r1 = s.calc(b, "*", c)
    a = r1 + s.n(1)
    e2, r2 = s.calc(a, "-", r1)
    s.facts += [f"A book has {s.num(a)} pages.", f"{s.N} reads {s.num(b)} pages a day for {s.num(c)} days."]
    s.steps += [f"{s.N} reads {e1} pages.", f"There are {e2} pages left to read."]
    s.question = "How many pages are left to read?"
    return "pages", r2, None


def _weekly_run(s):
    a, b = s.n(1, 12), s.n(1, 4)
    e1, r1 = s.calc(b, "*", 7)
    e2, r2 = s.calc(a, "*", r1)
    s.num(7)
    s.facts += [f"{s.N} runs {s.num(a)} kilometers every day for {s.num(b)} weeks."]
    s.steps += [f"A week has 7 days, so {b} weeks is {e1} days.", f"{s.N} runs {e2} kilometers."]
    s.question = f"How many kilometers does {s.N} run?"
    return "km", r2, None


def _drive(s):
    a, b = s.n(10, 90), s.n(1, 8)
    e, r = s.calc(a, "*", b)
    s.facts += [f"{s.N} drives at {s.num(a)} kilometers per hour for {s.num(b)} hours."]
    s.steps += [f"{s.N} drives {e} kilometers."]
    s.question = f"How many kilometers does {s.N} drive?"
    return "km", r, None


def _travel_time(s):
    b, t = s.n(10, 90), s.n(1, 8)
    a = b * t
    e, r = s.calc(a, "/", b)
    s.facts += [f"{s.N} drives {s.num(a)} kilometers at {s.num(b)} kilometers per hour."]
    s.steps += [f"The trip takes {e} hours."]
    s.question = f"How many hours does {s.N} drive?"
    return "hours", r, None


def _practice(s):
    a = s.rng.choice([15, 20, 30, 45, 60, 90])
    b = s.n(2, 12)
    e1, r1 = s.calc(a, "*", b)
    e2, r2 = s.calc(r1, "/", 60)
    s.num(60)
    s.facts += [f"{s.N} practises the piano for {s.num(a)} minutes a day for {s.num(b)} days."]
    s.steps += [f"{s.N} practises for {e1} minutes.", f"An hour has 60 minutes, so that is {e2} hours."]
    s.question = f"How many hours does {s.N} practise?"
    return "hours", r2, None


def _tank(s):
    b, t, c = s.n(2, 12), s.n(2, 20), s.n(1)
    a = c + b * t  # draw the answer first so the division is exact
    e1, r1 = s.calc(a, "-", c)
    e2, r2 = s.calc(r1, "/", b)
    s.facts += [f"A tank holds {s.num(a)} liters and already has {s.num(c)} liters in it.",
                f"A pump adds {s.num(b)} liters per minute."]
    s.steps += [f"The tank needs {e1} more liters.", f"The pump needs {e2} minutes."]
    s.question = "How many minutes does the pump need to fill the tank?"
    return "fill", r2, None


def _two_legs(s):
    a, b, c, d = s.n(10, 90), s.n(1, 5), s.n(10, 90), s.n(1, 5)
    e1, r1 = s.calc(a, "*", b)
    e2, r2 = s.calc(c, "*", d)
    e3, r3 = s.calc(r1, "+", r2)
    s.facts += [f"{s.N} drives at {s.num(a)} kilometers per hour for {s.num(b)} hours, then at "
                f"{s.num(c)} kilometers per hour for {s.num(d)} hours."]
    s.steps += [f"First {s.she} drives {e1} kilometers.", f"Then {s.she} drives {e2} kilometers.",
                f"In total {s.she} drives {e3} kilometers."]
    s.question = f"How many kilometers does {s.N} drive in total?"
    return "km", r3, None


def _workshop(s):
    a, b, c = s.n(2, 12), s.n(1, 9), s.n(2, 9)
    e1, r1 = s.calc(a, "*", b)
    e2, r2 = s.calc(r1, "*", c)
    s.facts += [f"A workshop has {s.num(a)} workers.", f"Each worker builds {s.num(b)} chairs a day.",
                f"They work for {s.num(c)} days."]
    s.steps += [f"Each day the workers build {e1} chairs.", f"In {c} days they build {e2} chairs."]
    s.question = "How many chairs do they build?"
    return "chairs", r2, None


def _flour(s):
    a, b = s.n(2, 30) * 10, s.n(2, 6)
    e1, r1 = s.calc(a, "*", b)
    c = r1 + s.n(1) * 10
    e2, r2 = s.calc(c, "-", r1)
    s.facts += [f"A cake needs {s.num(a)} grams of flour.",
                f"{s.N} has {s.num(c)} grams of flour and bakes {s.num(b)} cakes."]
    s.steps += [f"{b} cakes need {e1} grams of flour.", f"{s.N} has {e2} grams of flour left."]
    s.question = f"How many grams of flour does {s.N} have left?"
    return "grams", r2, None


def _price_each(s):
    a, p = s.n(2, 12), s.price()
    e, r = s.calc(a, "*", p, money=True)
    s.facts += [f"{s.N} buys {s.num(a)} {s.pl} at {s.cash(p)} each."]
    s.steps += [f"{a} {s.pl} cost {e} dollars."]
    s.question = f"How many dollars does {s.N} spend?"
    return "cost", r, None


def _change(s):
    a, p = s.n(2, 12), s.price()
    e1, r1 = s.calc(a, "*", p, money=True)
    bill = next((b for b in BILLS if b > r1), None)
    if bill is None:
        raise Retry
    e2, r2 = s.calc(bill, "-", r1, money=True)
    s.facts += [f"{s.N} buys {s.num(a)} {s.pl} at {s.cash(p)} each and pays with a {s.cash(bill)} bill."]
    s.steps += [f"The {s.pl} cost {e1} dollars.", f"{s.N} gets back {e2} dollars."]
    s.question = f"How many dollars of change does {s.N} get?"
    return "change", r2, None


def _discount(s):
    a, p = s.n(10) * s.rng.choice([1, 2, 5]), s.pct()
    e1, r1 = s.calc(a, "%", p, money=True)
    e2, r2 = s.calc(a, "-", r1, money=True)
    s.facts += [f"{s.N} wants a jacket that costs {s.cash(a)}.", f"It is on sale for {s.num(p)}% off."]
    s.steps += [f"The discount is {e1} dollars.", f"The sale price is {e2} dollars."]
    s.question = f"How many dollars does {s.N} pay for the jacket?"
    return "cost", r2, None


def _tip(s):
    a, p = s.n(10) * s.rng.choice([1, 2]), s.rng.choice([10, 15, 20, 25])
    e1, r1 = s.calc(a, "%", p, money=True)
    e2, r2 = s.calc(a, "+", r1, money=True)
    s.facts += [f"{s.N}'s dinner costs {s.cash(a)} and {s.she} leaves a {s.num(p)}% tip."]
    s.steps += [f"The tip is {e1} dollars.", f"{s.N} pays {e2} dollars."]
    s.question = f"How many dollars does {s.N} pay in total?"
    return "cost", r2, None


def _wage(s):
    w, h, d = s.n(5), s.n(2, 10), s.n(2, 7)
    e1, r1 = s.calc(w, "*", h, money=True)
    e2, r2 = s.calc(r1, "*", d, money=True)
    s.facts += [f"{s.N} earns {s.cash(w)} an hour and works {s.num(h)} hours a day for {s.num(d)} days."]
    s.steps += [f"Each day {s.she} earns {e1} dollars.", f"In {d} days {s.she} earns {e2} dollars."]
    s.question = f"How many dollars does {s.N} earn?"
    return "cash", r2, None


def _saving(s):
    c, weeks = s.n(2), s.n(2, 12)
    b = s.n(1)
    a = b + c * weeks
    e1, r1 = s.calc(a, "-", b, money=True)
    e2, r2 = s.calc(r1, "/", c)
    s.facts += [f"{s.N} wants a bike that costs {s.cash(a)}.",
                f"{s.She} has {s.cash(b)} and saves {s.cash(c)} a week."]
    s.steps += [f"{s.N} still needs {e1} dollars.", f"At {money(c)} a week that takes {e2} weeks."]
    s.question = f"How many weeks does {s.N} need to save?"
    return "weeks", r2, None


def _two_items(s):
    a, p, b, q = s.n(2, 10), s.price(), s.n(2, 10), s.price()
    e1, r1 = s.calc(a, "*", p, money=True)
    e2, r2 = s.calc(b, "*", q, money=True)
    e3, r3 = s.calc(r1, "+", r2, money=True)
    s.facts += [f"{s.N} buys {s.num(a)} pens at {s.cash(p)} each and {s.num(b)} notebooks at {s.cash(q)} each."]
    s.steps += [f"The pens cost {e1} dollars.", f"The notebooks cost {e2} dollars.",
                f"Together they cost {e3} dollars."]
    s.question = f"How many dollars does {s.N} spend?"
    return "cost", r3, None


def _split_bill(s):
    a, each = s.n(2, 8), s.price()
    b = a * each
    e, r = s.calc(b, "/", a, money=True)
    s.facts += [f"{s.num(a)} friends share a {s.cash(b)} bill equally."]
    s.steps += [f"Each friend pays {e} dollars."]
    s.question = "How many dollars does each friend pay?"
    return "share", r, None


def _glasses(s):
    p = s.pct()
    a = s.n(1) * 20  # any percent in PERCENTS of a multiple of 20 is a whole number of students
    e, r = s.calc(a, "%", p)
    s.facts += [f"A school has {s.num(a)} students, and {s.num(p)}% of them wear glasses."]
    s.steps += [f"{e} students wear glasses."]
    s.question = "How many students wear glasses?"
    return "students", r, None


def _no_glasses(s):
    p = s.rng.choice([10, 20, 25, 40, 50])
    a = s.n(1) * 20
    e1, r1 = s.calc(a, "%", p)
    e2, r2 = s.calc(a, "-", r1)
    s.facts += [f"A school has {s.num(a)} students, and {s.num(p)}% of them wear glasses."]
    s.steps += [f"{e1} students wear glasses.", f"So {e2} students do not wear glasses."]
    s.question = "How many students do not wear glasses?"
    return "students", r2, None


def _profit(s):
    a, p = s.n(2, 20), s.price()
    q = p + s.price()
    e1, r1 = s.calc(q, "-", p, money=True)
    e2, r2 = s.calc(r1, "*", a, money=True)
    s.facts += [f"{s.N} buys {s.num(a)} {s.pl} for {s.cash(p)} each and sells them all for {s.cash(q)} each."]
    s.steps += [f"{s.N} makes {e1} dollars on each {s.sing}.", f"On {a} {s.pl} {s.she} makes {e2} dollars."]
    s.question = f"How many dollars of profit does {s.N} make?"
    return "cash", r2, None


def _phone_plan(s):
    a, b, c = s.n(5), s.n(5), s.n(2, 12)
    e1, r1 = s.calc(a, "*", c, money=True)
    e2, r2 = s.calc(r1, "+", b, money=True)
    s.facts += [f"{s.N}'s phone plan costs {s.cash(a)} a month plus a one-time {s.cash(b)} fee.",
                f"{s.She} keeps it for {s.num(c)} months."]
    s.steps += [f"The monthly charges are {e1} dollars.", f"With the fee {s.she} pays {e2} dollars."]
    s.question = f"How many dollars does {s.N} pay?"
    return "cost", r2, None


def _rope(s):
    b = s.rng.choice([10, 20, 25, 50])
    a = s.n(1, 20)
    e1, r1 = s.calc(a, "*", 100)
    e2, r2 = s.calc(r1, "/", b)
    s.num(100)
    s.facts += [f"{s.N} has a rope {s.num(a)} meters long and cuts it into pieces {s.num(b)} centimeters long."]
    s.steps += [f"{a} meters is {e1} centimeters.", f"That makes {e2} pieces."]
    s.question = f"How many pieces does {s.N} get?"
    return "items", r2, ("piece", "pieces")


def _rice(s):
    a, b = s.n(2, 50), s.n(2, 20)
    e1, r1 = s.calc(a, "*", b)
    c = s.n(1, r1 - 1)
    e2, r2 = s.calc(r1, "-", c)
    s.facts += [f"{s.N} loads {s.num(b)} bags of rice onto a truck.", f"Each bag weighs {s.num(a)} kilograms.",
                f"Then {s.she} unloads {s.num(c)} kilograms."]
    s.steps += [f"The bags weigh {e1} kilograms.", f"After unloading, {e2} kilograms are left."]
    s.question = "How many kilograms of rice are left on the truck?"
    return "kg", r2, None


def _ages(s):
    a, b, c = s.n(2, 40), s.n(1, 30), s.n(1, 20)
    e1, r1 = s.calc(a, "+", b)
    e2, r2 = s.calc(r1, "+", c)
    s.facts += [f"{s.N} is {s.num(a)} years old.", f"{s.F} is {s.num(b)} years older than {s.N}."]
    s.steps += [f"{s.F} is {e1} years old now.", f"In {c} years {s.F} will be {e2} years old."]
    s.question = f"How old will {s.F} be in {s.num(c)} years?"
    return "age", r2, None


def _average(s):
    a, b = s.n(1), s.n(1)
    c = s.n(1)
    c += (-(a + b + c)) % 3  # make the total divisible by 3 so the average is whole
    e1, r1 = s.calc(a, "+", b)
    e2, r2 = s.calc(r1, "+", c)
    e3, r3 = s.calc(r2, "/", 3)
    s.num(3)
    s.facts += [f"{s.N} scores {s.num(a)}, {s.num(b)} and {s.num(c)} points in three games."]
    s.steps += [f"The first two games give {e1} points.", f"All three games give {e2} points.",
                f"The average over 3 games is {e3} points."]
    s.question = f"What is {s.N}'s average score per game?"
    return "average", r3, None


def _fence(s):
    a, b = s.n(2, 50), s.n(2, 50)
    e1, r1 = s.calc(a, "+", b)
    e2, r2 = s.calc(r1, "*", 2)
    s.num(2)
    s.facts += [f"A rectangular garden is {s.num(a)} meters long and {s.num(b)} meters wide."]
    s.steps += [f"One length and one width make {e1} meters.", f"The fence goes around twice that: {e2} meters."]
    s.question = "How many meters of fence go around the garden?"
    return "fence", r2, None


def _carpet(s):
    a, b, p = s.n(2, 10), s.n(2, 10), s.price()
    e1, r1 = s.calc(a, "*", b)
    e2, r2 = s.calc(r1, "*", p, money=True)
    s.facts += [f"{s.N}'s room is {s.num(a)} meters long and {s.num(b)} meters wide.",
                f"Carpet costs {s.cash(p)} per square meter."]
    s.steps += [f"The room is {e1} square meters.", f"The carpet costs {e2} dollars."]
    s.question = f"How many dollars does {s.N} pay for the carpet?"
    return "cost", r2, None


def _marbles_bags(s):
    b, per = s.n(2, 9), s.n(2, 12)
    e1, r1 = s.calc(b, "*", per)
    c = s.n(1, r1 - 1)
    e2, r2 = s.calc(r1, "+", c)
    s.facts += [f"{s.N} has {s.num(b)} bags with {s.num(per)} {s.pl} in each bag and {s.num(c)} loose {s.pl}."]
    s.steps += [f"The bags hold {e1} {s.pl}.", f"With the loose ones {s.N} has {e2} {s.pl}."]
    s.question = f"How many {s.pl} does {s.N} have?"
    return "items", r2, (s.sing, s.pl)


def _bus(s):
    a = s.n(10, 60)
    b = s.n(1, a - 1)
    c = s.n(1)
    e1, r1 = s.calc(a, "-", b)
    e2, r2 = s.calc(r1, "+", c)
    s.facts += [f"A bus has {s.num(a)} passengers.", f"At the first stop {s.num(b)} get off and {s.num(c)} get on."]
    s.steps += [f"After {b} get off there are {e1} passengers.", f"After {c} get on there are {e2} passengers."]
    s.question = "How many passengers are on the bus now?"
    return "passengers", r2, None


def _allowance(s):
    a, w = s.n(1), s.n(2, 8)
    e1, r1 = s.calc(a, "*", w, money=True)
    s.facts += [f"{s.N} gets {s.cash(a)} of pocket money every week and saves all of it for {s.num(w)} weeks."]
    s.steps += [f"{s.N} saves {e1} dollars."]
    s.question = f"How many dollars does {s.N} have?"
    return "cash", r1, None


# name: (function, steps, can a story continue from its result)
BASES = {
    "boxes": (_boxes, 1, True), "give_away": (_give_away, 1, True), "gift": (_gift, 1, True),
    "share": (_share, 1, False), "half": (_half, 1, True), "garden": (_garden, 2, True),
    "times_as_many": (_times_as_many, 2, False), "fewer_than": (_fewer_than, 2, False),
    "dozen": (_dozen, 2, True), "reading": (_reading, 2, False), "weekly_run": (_weekly_run, 2, True),
    "drive": (_drive, 1, True), "travel_time": (_travel_time, 1, True), "practice": (_practice, 2, True),
    "tank": (_tank, 2, False), "two_legs": (_two_legs, 3, True), "workshop": (_workshop, 2, False),
    "flour": (_flour, 2, False), "price_each": (_price_each, 1, True), "change": (_change, 2, False),
    "discount": (_discount, 2, True), "tip": (_tip, 2, True), "wage": (_wage, 2, True),
    "saving": (_saving, 2, False), "two_items": (_two_items, 3, True), "split_bill": (_split_bill, 1, False),
    "glasses": (_glasses, 1, False), "no_glasses": (_no_glasses, 2, False), "profit": (_profit, 2, True),
    "phone_plan": (_phone_plan, 2, True), "rope": (_rope, 2, True), "rice": (_rice, 2, True),
    "ages": (_ages, 2, False), "average": (_average, 3, False), "fence": (_fence, 2, False),
    "carpet": (_carpet, 2, True), "marbles_bags": (_marbles_bags, 2, True), "bus": (_bus, 2, False),
    "allowance": (_allowance, 1, True),
}


# --- stages: continue a story from its running result ------------------------------------------
# Each takes the story, the current value and unit, appends at most one fact and its step line(s),
# sets the question, and returns (kind, value, unit) of the new result.

def _items_more(s, v, u):
    k = s.n()
    e, r = s.calc(v, "+", k)
    s.facts.append(f"Then {s.she} gets {s.num(k)} more {u[1]}.")
    s.steps.append(f"With {k} more, {s.N} has {e} {u[1]}.")
    s.question = f"How many {u[1]} does {s.N} have now?"
    return "items", r, u


def _items_lose(s, v, u):
    k = s.n(1, v - 1)
    e, r = s.calc(v, "-", k)
    s.facts.append(f"{s.She} gives {s.num(k)} {u[1]} to {s.F}.")
    s.steps.append(f"After giving away {k}, {s.N} has {e} {u[1]} left.")
    s.question = f"How many {u[1]} does {s.N} have left?"
    return "items", r, u


def _items_bags(s, v, u):
    k = s.divisor(v)
    e, r = s.calc(v, "/", k)
    s.facts.append(f"{s.She} puts the {u[1]} into bags of {s.num(k)}.")
    s.steps.append(f"{v} {u[1]} fill {e} bags.")
    s.question = f"How many bags does {s.N} fill?"
    return "items", r, ("bag", "bags")


def _items_sell(s, v, u):
    p = s.price()
    e, r = s.calc(v, "*", p, money=True)
    s.facts.append(f"{s.She} sells each {u[0]} for {s.cash(p)}.")
    s.steps.append(f"{s.She} sells {v} {u[1]} at {money(p)} each, so {s.she} earns {e} dollars.")
    s.question = f"How many dollars does {s.N} earn?"
    return "cash", r, None


def _items_weigh(s, v, u):
    k = s.n(2, 9)
    e, r = s.calc(v, "*", k)
    s.facts.append(f"Each {u[0]} weighs {s.num(k)} kilograms.")
    s.steps.append(f"{v} {u[1]} weigh {e} kilograms.")
    s.question = f"How many kilograms do {s.N}'s {u[1]} weigh in total?"
    return "kg", r, None


def _items_friend(s, v, u):
    k = s.n(2, 5)
    e, r = s.calc(v, "*", k)
    s.facts.append(f"{s.F} has {s.num(k)} times as many {u[1]} as {s.N}.")
    s.steps.append(f"{s.F} has {e} {u[1]}.")
    s.question = f"How many {u[1]} does {s.F} have?"
    return "friend", r, None


def _cash_spend(s, v, u):
    quarters = min(4 * s.max_number, int(4 * v) - 1)  # spend a multiple of 25 cents, less than v
    if quarters < 1:
        raise Retry
    k = Fraction(s.rng.randint(1, quarters), 4)
    k = k.numerator if k.denominator == 1 else k
    e, r = s.calc(v, "-", k, money=True)
    s.facts.append(f"{s.She} spends {s.cash(k)} on {s.rng.choice(THINGS)}.")
    s.steps.append(f"After spending {money(k)}, {s.N} has {e} dollars left.")
    s.question = f"How many dollars does {s.N} have left?"
    return "cash", r, None


def _cash_gift(s, v, u):
    k = s.n(1)
    e, r = s.calc(v, "+", k, money=True)
    s.facts.append(f"{s.F} gives {s.her} {s.cash(k)}.")
    s.steps.append(f"With {money(k)} more, {s.N} has {e} dollars.")
    s.question = f"How many dollars does {s.N} have now?"
    return "cash", r, None


def _cash_buy(s, v, u):
    # prices are multiples of 25 cents up to $100; keep those that divide the money exactly
    options = [p for p in (Fraction(q, 4) for q in range(1, 4 * min(s.max_number, 100) + 1))
               if (v / p).denominator == 1 and v / p > 1]
    if not options:
        raise Retry
    p = s.rng.choice(options)
    p = p.numerator if p.denominator == 1 else p
    sing, pl = s.rng.choice(ITEMS)
    e, r = s.calc(v, "/", p)
    s.facts.append(f"{s.She} spends all of it on {pl} that cost {s.cash(p)} each.")
    s.steps.append(f"{s.N} can buy {e} {pl}.")
    s.question = f"How many {pl} does {s.N} buy?"
    return "items", r, (sing, pl)


def _cash_save(s, v, u):
    p = s.pct()
    e, r = s.calc(v, "%", p, money=True)
    s.facts.append(f"{s.She} saves {s.num(p)}% of it.")
    s.steps.append(f"{s.She} saves {e} dollars.")
    s.question = f"How many dollars does {s.N} save?"
    return "saved", r, None


def _cash_share(s, v, u):
    k = s.n(2, 9)
    e, r = s.calc(v, "/", k, money=True)
    s.facts.append(f"{s.She} shares it equally among {s.num(k)} friends.")
    s.steps.append(f"Each friend gets {e} dollars.")
    s.question = "How many dollars does each friend get?"
    return "share", r, None


def _cost_fee(s, v, u):
    k = s.n(1, 15)
    e, r = s.calc(v, "+", k, money=True)
    s.facts.append(f"There is also a {s.cash(k)} service fee.")
    s.steps.append(f"With the {money(k)} fee, {s.N} pays {e} dollars.")
    s.question = f"How many dollars does {s.N} pay in total?"
    return "cost", r, None


def _cost_coupon(s, v, u):
    k = s.n(1, min(20, int(v) - 1))
    e, r = s.calc(v, "-", k, money=True)
    s.facts.append(f"{s.She} has a coupon for {s.cash(k)} off.")
    s.steps.append(f"The coupon takes off {money(k)}, so {s.N} pays {e} dollars.")
    s.question = f"How many dollars does {s.N} pay?"
    return "cost", r, None


def _cost_weeks(s, v, u):
    k = s.n(2, 8)
    e, r = s.calc(v, "*", k, money=True)
    s.facts.append(f"{s.She} pays the same amount every week for {s.num(k)} weeks.")
    s.steps.append(f"In {k} weeks {s.N} pays {e} dollars.")
    s.question = f"How many dollars does {s.N} pay over the {k} weeks?"
    return "cost", r, None


def _cost_tax(s, v, u):
    p = s.rng.choice([5, 10, 20])
    e1, t = s.calc(v, "%", p, money=True)
    e2, r = s.calc(v, "+", t, money=True)
    s.facts.append(f"A {s.num(p)}% sales tax is added.")
    s.steps += [f"The tax is {e1} dollars.", f"With tax, {s.N} pays {e2} dollars."]
    s.question = f"How many dollars does {s.N} pay with tax?"
    return "cost", r, None


def _cost_change(s, v, u):
    bill = next((b for b in BILLS if b > v), None)
    if bill is None:
        raise Retry
    e, r = s.calc(bill, "-", v, money=True)
    s.facts.append(f"{s.She} pays with a {s.cash(bill)} bill.")
    s.steps.append(f"{s.N} gets back {e} dollars.")
    s.question = f"How many dollars of change does {s.N} get?"
    return "change", r, None


def _cost_split(s, v, u):
    k = s.n(2, 6)
    e, r = s.calc(v, "/", k, money=True)
    s.facts.append(f"The cost is shared equally by {s.num(k)} people.")
    s.steps.append(f"Each person pays {e} dollars.")
    s.question = "How many dollars does each person pay?"
    return "share", r, None


def _km_more(s, v, u):
    k = s.n(1)
    e, r = s.calc(v, "+", k)
    s.facts.append(f"Then {s.she} goes {s.num(k)} more kilometers.")
    s.steps.append(f"{s.N} travels {e} kilometers.")
    s.question = f"How many kilometers does {s.N} travel in total?"
    return "km", r, None


def _km_back(s, v, u):
    e, r = s.calc(v, "*", 2)
    s.num(2)
    s.facts.append(f"Then {s.she} comes back the same way.")
    s.steps.append(f"There and back is {e} kilometers.")
    s.question = f"How many kilometers does {s.N} travel in total?"
    return "km", r, None


def _km_days(s, v, u):
    k = s.n(2, 7)
    e, r = s.calc(v, "*", k)
    s.facts.append(f"{s.She} does this every day for {s.num(k)} days.")
    s.steps.append(f"In {k} days {s.N} travels {e} kilometers.")
    s.question = f"How many kilometers does {s.N} travel in total?"
    return "km", r, None


def _km_speed(s, v, u):
    k = s.divisor(v, 2, 90)
    e, r = s.calc(v, "/", k)
    s.facts.append(f"{s.She} travels at {s.num(k)} kilometers per hour.")
    s.steps.append(f"At {k} kilometers per hour, {v} kilometers take {e} hours.")
    s.question = f"How many hours does {s.N} travel?"
    return "hours", r, None


def _time_days(s, v, u, unit):
    k = s.n(2, 7)
    e, r = s.calc(v, "*", k)
    s.facts.append(f"{s.She} does the same every day for {s.num(k)} days.")
    s.steps.append(f"In {k} days that is {e} {unit}.")
    s.question = f"How many {unit} is that in total?"
    return unit, r, None


def _time_more(s, v, u, unit):
    k = s.n(1)
    e, r = s.calc(v, "+", k)
    s.facts.append(f"{s.She} also spends {s.num(k)} {unit} {s.rng.choice(ACTIVITIES)}.")
    s.steps.append(f"Adding {k} {unit} gives {e} {unit}.")
    s.question = f"How many {unit} does {s.N} spend in total?"
    return unit, r, None


def _hours_days(s, v, u):
    return _time_days(s, v, u, "hours")


def _hours_more(s, v, u):
    return _time_more(s, v, u, "hours")


def _hours_to_minutes(s, v, u):
    e, r = s.calc(v, "*", 60)
    s.num(60)
    s.steps.append(f"An hour has 60 minutes, so {v} hours is {e} minutes.")
    s.question = "How many minutes is that?"
    return "minutes", r, None


def _minutes_days(s, v, u):
    return _time_days(s, v, u, "minutes")


def _minutes_more(s, v, u):
    return _time_more(s, v, u, "minutes")


def _minutes_to_hours(s, v, u):
    if v % 60:
        raise Retry
    e, r = s.calc(v, "/", 60)
    s.num(60)
    s.steps.append(f"An hour has 60 minutes, so {v} minutes is {e} hours.")
    s.question = "How many hours is that?"
    return "hours", r, None


def _kg_more(s, v, u):
    k = s.n(1)
    e, r = s.calc(v, "+", k)
    s.facts.append(f"Then {s.num(k)} more kilograms are added.")
    s.steps.append(f"Now there are {e} kilograms.")
    s.question = "How many kilograms are there now?"
    return "kg", r, None


def _kg_remove(s, v, u):
    k = s.n(1, v - 1)
    e, r = s.calc(v, "-", k)
    s.facts.append(f"Then {s.num(k)} kilograms are taken away.")
    s.steps.append(f"{e} kilograms are left.")
    s.question = "How many kilograms are left?"
    return "kg", r, None


def _kg_bags(s, v, u):
    k = s.divisor(v)
    e, r = s.calc(v, "/", k)
    s.facts.append(f"{s.She} packs it all into bags of {s.num(k)} kilograms.")
    s.steps.append(f"{v} kilograms fill {e} bags.")
    s.question = f"How many bags does {s.N} fill?"
    return "items", r, ("bag", "bags")


def _kg_sell(s, v, u):
    p = s.price()
    e, r = s.calc(v, "*", p, money=True)
    s.facts.append(f"{s.She} sells it for {s.cash(p)} per kilogram.")
    s.steps.append(f"{v} kilograms at {money(p)} each bring {e} dollars.")
    s.question = f"How many dollars does {s.N} get?"
    return "cash", r, None


# kind -> [(name, function, steps, final: only as the last stage)]
STAGES = {
    "items": [("items_more", _items_more, 1, False), ("items_lose", _items_lose, 1, False),
              ("items_bags", _items_bags, 1, False), ("items_sell", _items_sell, 1, False),
              ("items_weigh", _items_weigh, 1, False), ("items_friend", _items_friend, 1, True)],
    "cash": [("cash_spend", _cash_spend, 1, False), ("cash_gift", _cash_gift, 1, False),
             ("cash_buy", _cash_buy, 1, False), ("cash_save", _cash_save, 1, True),
             ("cash_share", _cash_share, 1, True)],
    "cost": [("cost_fee", _cost_fee, 1, False), ("cost_coupon", _cost_coupon, 1, False),
             ("cost_weeks", _cost_weeks, 1, False), ("cost_tax", _cost_tax, 2, False),
             ("cost_change", _cost_change, 1, True), ("cost_split", _cost_split, 1, True)],
    "km": [("km_more", _km_more, 1, False), ("km_back", _km_back, 1, False),
           ("km_days", _km_days, 1, False), ("km_speed", _km_speed, 1, False)],
    "hours": [("hours_days", _hours_days, 1, False), ("hours_more", _hours_more, 1, False),
              ("hours_to_minutes", _hours_to_minutes, 1, False)],
    "minutes": [("minutes_days", _minutes_days, 1, False), ("minutes_more", _minutes_more, 1, False),
                ("minutes_to_hours", _minutes_to_hours, 1, True)],
    "kg": [("kg_more", _kg_more, 1, False), ("kg_remove", _kg_remove, 1, False),
           ("kg_bags", _kg_bags, 1, False), ("kg_sell", _kg_sell, 1, False)],
}
