"""Checker-guided decoding: spend compute at answer time where a checker can tell a wrong step.

    outcomes = search.run(engine, problems, SearchConfig(method="step_retry"), batch_size=64)

A Problem is a prompt (token ids), a token budget, a seed and a `Checker`: a function of (steps,
final answer) built from the question alone (`checker_for`, `checker_for_question`), so no method
here ever sees the gold answer. Lines are judged by verdict.judge_lines (a checker error lets the
line pass unjudged: verdict.py); text is the engine's `decode`. The methods (docs/search.md):

  greedy      one answer, argmax.
  majority    k samples; the most common final answer (self-consistency); no checker.
  best_of_n   n samples; the one with the longest checked valid prefix (a fully valid chain first),
              the most common answer among ties.
  step_retry  a line at a time (engine.RowSession: the prompt is prefilled once, a rejected line is a
              pointer move back in the KV cache); a line's first try is greedy, a rejected line is
              resampled up to `retries` times (with `candidates` > 1, several at once and the valid
              one the model finds most likely kept), or with `propose: branch` (the default) replaced
              by the model's next most likely lines: a tried line up to one of its tokens, one of the
              model's next choices there instead, greedy to the line's end, best first by the changed
              prefix's log-probability (no sampling, no line tried twice). Problems join the session as
              others finish. A line that cannot be fixed: back up one line (`backup`), then give up
              on it: keep its greedy version and go on greedily unchecked (`on_fail: continue`, since
              every line after a broken one fails) or end the answer (`on_fail: stop`). A resampled line that repeats a rejected text is rejected unchecked.
  step_beam   `width` beams per problem, each expanded by `expand` candidate lines per step (the first
              greedy), ranked by valid prefix, then the model's log-probability; the first finished
              fully valid chain wins.

Every Outcome counts the tokens generated for its problem, rejected ones included (the compute a
user pays), the lines resampled, and keeps each rejected line (a Rejected: step, text and the
checker's reason). `check_methods` is the one rule on which methods a problem allows.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field, replace

from reasonlm.answer import answer_key, parse_completion
from reasonlm.config import CHECKED_METHODS, SEARCH_METHODS, SearchConfig
from reasonlm.engine import SamplingParams, Unit
from reasonlm.example import Example
from reasonlm.stats import draw_seed, majority_vote
from reasonlm.tasks import parse_any_question
from reasonlm.tasks.base import Task
from reasonlm.tasks.gsm8k import check_equation_steps
from reasonlm.verdict import Checker, LineVerdict, check_solution, judge_lines, own_answer


# --- the gold-free checker: the tasks' checkers, through verdict.check_solution -----------------
def strip_gold(example: Example) -> Example:
    """The example without its gold answer and gold steps (what a search may see)."""
    return replace(example, answer="", steps=())


def checker_for(task: Task, example: Example, kind: str | None = None) -> Checker | None:
    """The checker of `example` that needs no gold, or None for an answer-only task. `kind` is
    task.gold_free(example) (GOLD_FREE), which the caller may take before stripping the gold.
    The chain is checked against the model's own final answer (verdict.own_answer)."""
    kind = kind or task.gold_free(example)
    if kind == "answer":
        return None
    question_only = strip_gold(example)
    checking = _CALCULATOR if kind == "calculator" else task
    return lambda steps, answer: check_solution(checking, own_answer(question_only, answer), steps, answer)


def checker_for_question(question: str) -> Checker:
    """A checker from question text alone (chat): the generated family that reads the question
    (chat's /verify path), else the calculator check of every equation in a line."""
    found = parse_any_question(question)
    if found is not None:
        return checker_for(*found)
    return checker_for(_CALCULATOR, Example(question, ""))


class _Calculator:
    """Any text: every `a op b = c` in a line must be true."""
    name = "calculator"

    def gold_free(self, example):
        return "calculator"

    def check(self, example, steps, answer):
        return check_equation_steps(example, steps, answer)


_CALCULATOR = _Calculator()


def methods_for(checker: Checker | None) -> tuple[str, ...]:
    """The methods a problem with this checker allows (answer-only: greedy and majority)."""
    return SEARCH_METHODS if checker is not None else tuple(m for m in SEARCH_METHODS if m not in CHECKED_METHODS)


def check_methods(method: str, answer_only: str | None, setting: str = "search.method") -> None:
    """The one rule on methods: one that checks steps (CHECKED_METHODS) needs every problem to be
    checkable without the gold. `answer_only` names a problem that is not (None: all are); then
    ValueError names it, the methods it allows and the `setting` that asked for `method`."""
    if method in CHECKED_METHODS and answer_only is not None:
        allowed = " and ".join(methods_for(None))
        raise ValueError(f"{answer_only} is answer-only: it supports search methods {allowed}, not {setting}={method!r}")


# --- problems and outcomes ---------------------------------------------------------------------
@dataclass
class Problem:
    prompt: list[int]
    budget: int
    seed: int = 0
    checker: Checker | None = None


@dataclass
class Rejected:
    """A line the search threw away (dataclasses.asdict: samples.jsonl's rejected_steps entry)."""
    step: int  # the line's number in the answer, from 1
    text: str
    why: str  # the checker's reason


@dataclass
class Outcome:
    tokens: list[int]
    """The answer's token ids."""
    generated: int = 0
    """Tokens generated for the problem, every rejected line and discarded sample included."""
    retried: int = 0
    """Lines resampled (step_retry) or candidate lines beyond the first per beam (step_beam)."""
    rejected: list[Rejected] = field(default_factory=list)
    """Lines the search threw away."""
    gave_up: int = 0
    """Lines the search could not fix."""
    samples: int = 1
    """Complete answers drawn (majority, best_of_n) or beams started (step_beam)."""


# --- the entry point ---------------------------------------------------------------------------
def run(engine, problems: list[Problem], cfg: SearchConfig, batch_size: int = 64, top_p: float = 1.0,
        stop_strings: tuple[str, ...] = (), stats: dict | None = None) -> list[Outcome]:
    """One Outcome per problem, in order; text is `engine.decode` (token ids -> text). `stats`, when
    given, sums the step methods' RowSession.stats (prefills, prefilled tokens, decode steps)."""
    check_methods(cfg.method, next((f"problem {i}" for i, p in enumerate(problems) if p.checker is None), None))
    decode = engine.decode
    method = {"greedy": _greedy, "majority": _sampled, "best_of_n": _sampled, "step_retry": _step_retry,
              "step_beam": _step_beam}[cfg.method]
    return method(engine, decode, problems, cfg, top_p, tuple(stop_strings), stats, batch_size) if problems else []


def _open(engine, problems, top_p, stops):
    return engine.rows([p.prompt for p in problems], [p.budget for p in problems], top_p, stops)


def _tally(stats: dict | None, session) -> None:
    if stats is not None:
        for key, value in session.stats.items():
            stats[key] = stats.get(key, 0) + value


def _greedy(engine, decode, problems, cfg, top_p, stops, stats, batch_size):
    outs = engine.generate([p.prompt for p in problems],
                           SamplingParams(max_new_tokens=[p.budget for p in problems], stop_strings=stops,
                                          batch_size=batch_size))
    return [Outcome(o, generated=len(o)) for o in outs]


def _sampled(engine, decode, problems, cfg, top_p, stops, stats, batch_size):
    """majority and best_of_n: m complete samples per problem, then one is chosen."""
    m = cfg.k if cfg.method == "majority" else cfg.n
    outs = engine.generate([p.prompt for p in problems for _ in range(m)],
                           SamplingParams(max_new_tokens=[p.budget for p in problems for _ in range(m)],
                                          temperature=cfg.temperature, top_p=top_p, stop_strings=stops,
                                          seeds=[draw_seed(p.seed, "sample", i) for p in problems for i in range(m)],
                                          batch_size=batch_size * m))
    results = []
    for j, problem in enumerate(problems):
        samples = outs[j * m:(j + 1) * m]
        texts = [decode(o) for o in samples]
        pool = list(range(m))
        if cfg.method == "best_of_n":  # a valid chain first, then the longest valid prefix
            scores = [judge_lines(problem.checker, t, final=True) for t in texts]
            best = max((s.chain_valid, s.valid) for s in scores)
            pool = [i for i in pool if (scores[i].chain_valid, scores[i].valid) == best]
        answers = [parse_completion(texts[i]).answer for i in pool]
        winner, _ = majority_vote(answers, key=lambda a: answer_key(a) or None)
        chosen = next((i for i, a in zip(pool, answers)
                       if winner is not None and a is not None and answer_key(a) == answer_key(winner)), pool[0])
        results.append(Outcome(samples[chosen], generated=sum(map(len, samples)), samples=m))
    return results


# --- step_retry ------------------------------------------------------------------------------
@dataclass
class _Retry:
    """One problem's state in step_retry."""
    row: int
    starts: list = field(default_factory=lambda: [0])  # token length at the start of every accepted line
    attempts: int = 0  # resamples of the current line so far
    rows: list = field(default_factory=list)  # the rows drawing the current line
    first: dict = field(default_factory=dict)  # line index -> (tokens, end) of its greedy try
    dead: dict = field(default_factory=dict)  # line index -> texts known to fail there
    checking: bool = True
    backups: int = 0
    done: bool = False
    outcome: Outcome = field(default_factory=lambda: Outcome([]))
    # propose: branch
    forced: dict = field(default_factory=dict)  # row -> (tokens of its line it was given, their log-probability)
    branches: dict = field(default_factory=dict)  # line index -> heap of (-log-probability, n, prefix) to try
    tried: dict = field(default_factory=dict)  # line index -> prefixes already given


def _push_branches(s: _Retry, line: int, row: int, unit: Unit, stop_ids, ends_line) -> None:
    """Every place of this try of the line where another likely token (engine.OTHERS per place)
    could go instead: the prefix up to that token plus the other token, scored by the prefix's
    log-probability. An other token that ends the answer or the line is left out (the try would
    not be a whole line)."""
    prefix, score = s.forced.get(row, ((), 0.0))
    heap = s.branches.setdefault(line, [])
    for k, (logp, others) in enumerate(unit.picks):
        for other_logp, other in others:
            if other not in stop_ids and not ends_line(other):
                heapq.heappush(heap, (-(score + other_logp), next(_ORDER), prefix + tuple(unit.tokens[:k]) + (other,)))
        score += logp


_ORDER = itertools.count()  # ties in a branch heap go first come, first served


def _step_retry(engine, decode, problems, cfg, top_p, stops, stats, batch_size):
    """Up to `batch_size` problems decode together; as they finish, the next ones join the session
    (a problem that retries many lines does not hold the others' compute idle). The problems with
    the largest budgets go first, so the short ones fill the session's end instead of long ones
    running on alone."""
    order = sorted(range(len(problems)), key=lambda i: (-problems[i].budget, i))
    states: dict[int, _Retry] = {}
    session = None
    refill = max(1, batch_size // 8)  # join new problems in groups: every join copies the cache once
    sampled = cfg.propose == "sample"
    ended: dict[int, Unit] = {}  # rows that ended their line, waiting for the problem's other rows
    while True:
        live = [(j, s) for j, s in states.items() if not s.done]
        waiting = order[len(states):]
        if waiting and (session is None or len(live) <= batch_size - refill):
            joining = waiting[:batch_size - len(live)]
            if session is None:
                session = _open(engine, [problems[j] for j in joining], top_p, stops)
                rows = list(range(len(joining)))
            else:
                rows = session.add([problems[j].prompt for j in joining], [problems[j].budget for j in joining])
            for j, r in zip(joining, rows):
                states[j] = _Retry(row=r, rows=[r], backups=cfg.backup)
                live.append((j, states[j]))
        if not live:
            break
        rows, temps, seeds = [], [], []
        for j, s in live:
            line = len(s.starts) - 1
            for c, row in enumerate(s.rows):
                if row not in ended:
                    rows.append(row)
                    temps.append(cfg.temperature if s.attempts and sampled else 0.0)
                    seeds.append(draw_seed(problems[j].seed, "line", line, s.attempts, c))
        ended.update(session.decode(rows, temps, seeds, until="any"))  # no problem waits for another's line
        for j, s in live:
            if all(row in ended for row in s.rows):
                units = {row: ended.pop(row) for row in s.rows}
                _retry_after_line(session, decode, problems[j], s, units, cfg, engine.stop_ids)
    _tally(stats, session)
    return [replace(states[j].outcome, tokens=list(session.tokens(states[j].row))) for j in range(len(problems))]


def _retry_after_line(session, decode, problem, s: _Retry, units: dict[int, Unit], cfg: SearchConfig,
                      stop_ids) -> None:
    line, start = len(s.starts) - 1, s.starts[-1]
    drawn = [(row, units[row]) for row in s.rows]
    s.outcome.generated += sum(len(u.tokens) for _, u in drawn)
    if s.attempts == 0:
        s.first.setdefault(line, (list(session.tokens(s.rows[0])[start:]), drawn[0][1].end))
    passed = []
    for row, unit in drawn:
        text = decode(session.tokens(row)[start:])
        if not s.checking or unit.end == "budget":
            passed.append((unit.logprob, row))
            continue
        if text in s.dead.get(line, ()):
            verdict = LineVerdict(False, 0, False, "repeats a line that was rejected here")
        else:
            verdict = judge_lines(problem.checker, decode(session.tokens(row)), final=unit.end == "stop")
        if verdict.ok:
            passed.append((unit.logprob, row))
        else:
            s.dead.setdefault(line, set()).add(text)
            s.outcome.rejected.append(Rejected(line + 1, text, verdict.why))
        if cfg.propose == "branch":
            _push_branches(s, line, row, unit, stop_ids, session.ends_line)
    if passed:  # keep the valid line the model finds most likely
        _, best = max(passed)
        for row in s.rows:
            if row != best:
                session.close(row)
        s.row, s.rows, s.attempts, s.forced = best, [best], 0, {}
        if units[best].end in ("stop", "budget"):
            s.done = True
            session.close(best)
        else:
            s.starts.append(len(session.tokens(best)))
            s.branches.pop(line + 1, None)
            s.tried.pop(line + 1, None)
        return
    for row in s.rows[1:]:
        session.close(row)
    s.row, s.rows, s.forced = s.rows[0], [s.rows[0]], {}
    budget_left = not cfg.retry_budget or s.outcome.retried < cfg.retry_budget
    if s.attempts < cfg.retries and budget_left and _resample(session, s, line, start, cfg):
        return
    if s.backups and line > 0 and budget_left:  # back up: resample the line before, never its old text again
        s.starts.pop()
        previous = s.starts[-1]
        s.dead.setdefault(line - 1, set()).add(decode(session.tokens(s.row)[previous:start]))
        s.attempts = 0
        if _resample(session, s, line - 1, previous, cfg):
            s.backups -= 1
            s.first.pop(line, None)
            return
        s.starts.append(start)  # nothing left to try on the line before either
    s.outcome.gave_up += 1
    session.rewind(s.row, start)
    tokens, end = s.first[line]
    if cfg.on_fail == "stop":
        s.done = True
        session.close(s.row)
        return
    session.extend(s.row, tokens)  # its greedy version; the rest greedily, unchecked
    s.checking = False
    if end in ("stop", "budget"):
        s.done = True
        session.close(s.row)
    else:
        s.starts.append(len(session.tokens(s.row)))


def _resample(session, s: _Retry, line: int, start: int, cfg: SearchConfig) -> bool:
    """Set up the next try of `line` (which starts at token `start`): `candidates` rows, resampled or
    given their branch prefixes; False when branching has nothing left to try there."""
    if cfg.propose == "branch":
        tried, heap, prefixes = s.tried.setdefault(line, set()), s.branches.get(line, []), []
        while heap and len(prefixes) < cfg.candidates:
            logp, _, prefix = heapq.heappop(heap)
            if prefix not in tried:
                tried.add(prefix)
                prefixes.append((prefix, -logp))
        if not prefixes:
            return False
    s.attempts += 1
    s.outcome.retried += 1
    if cfg.propose == "sample":
        session.rewind(s.row, start)
        s.rows = [s.row] + [session.fork(s.row) for _ in range(cfg.candidates - 1)]
        return True
    s.rows = [s.row] + [session.fork(s.row) for _ in prefixes[1:]]
    for row, (prefix, logp) in zip(s.rows, prefixes):
        written = session.tokens(row)[start:]
        same = next((i for i, (a, b) in enumerate(zip(written, prefix)) if a != b), min(len(written), len(prefix)))
        session.rewind(row, start + same)  # what the row wrote up to the branch stays in its cache
        session.extend(row, list(prefix[same:]))
        s.forced[row] = (prefix, logp)
        s.outcome.generated += 1  # the swapped-in token is new; the rest of the prefix was written before
    return True


# --- step_beam -------------------------------------------------------------------------------
@dataclass
class _Beam:
    row: int
    logprob: float = 0.0
    valid: bool = True  # every finished line passed
    lines: int = 0


def _step_beam(engine, decode, problems, cfg, top_p, stops, stats, batch_size):
    return [o for start in range(0, len(problems), batch_size)
            for o in _beam_batch(engine, decode, problems[start:start + batch_size], cfg, top_p, stops, stats)]


def _beam_batch(engine, decode, problems, cfg, top_p, stops, stats):
    session = _open(engine, problems, top_p, stops)
    beams = [[_Beam(i)] for i in range(len(problems))]
    finished: list[list] = [[] for _ in problems]  # (valid, chain_valid, valid steps, logprob, row)
    outcomes = [Outcome([], samples=cfg.width) for _ in problems]
    step = 0
    while any(beams):
        expansion = []  # (problem, parent beam, row, candidate)
        for j, group in enumerate(beams):
            hopeless = not any(b.valid for b in group)  # nothing valid left: one greedy beam, unchecked
            for b in group[:1] if hopeless else group:
                for c in range(1 if hopeless else cfg.expand):
                    expansion.append((j, b, b.row if c == 0 else session.fork(b.row), c))
        units = session.decode([row for _, _, row, _ in expansion],
                               [0.0 if c == 0 else cfg.temperature for *_, c in expansion],
                               [draw_seed(problems[j].seed, "beam", step, b.row, c) for j, b, _, c in expansion])
        step += 1
        candidates: dict[int, dict] = {}
        for j, parent, row, c in expansion:
            unit, outcome = units[row], outcomes[j]
            outcome.generated += len(unit.tokens)
            outcome.retried += c > 0
            text = decode(session.tokens(row))
            final = unit.end in ("stop", "budget")
            verdict = judge_lines(problems[j].checker, text, final) if parent.valid else LineVerdict(False, 0, False)
            if parent.valid and not verdict.ok:
                start = len(text) - len(decode(unit.tokens))
                outcome.rejected.append(Rejected(parent.lines + 1, text[max(start, 0):], verdict.why))
            beam = _Beam(row, parent.logprob + unit.logprob, parent.valid and verdict.ok, parent.lines + 1)
            seen = candidates.setdefault(j, {})
            if text in seen and seen[text][0].logprob >= beam.logprob:  # the same text twice: one beam
                session.close(row)
                continue
            if text in seen:
                session.close(seen[text][0].row)
            seen[text] = (beam, final, verdict)
        for j in range(len(problems)):
            if j not in candidates:
                continue
            alive = []
            for beam, final, verdict in candidates[j].values():
                if final:
                    finished[j].append((beam.valid, verdict.chain_valid, verdict.valid, beam.logprob, beam.row))
                    session.close(beam.row)
                else:
                    alive.append(beam)
            alive.sort(key=lambda b: (b.valid, b.logprob), reverse=True)
            for b in alive[cfg.width:]:
                session.close(b.row)
            beams[j] = alive[:cfg.width]
            if any(f[0] and f[1] for f in finished[j]):  # a fully valid chain: done
                for b in beams[j]:
                    session.close(b.row)
                beams[j] = []
    for j, outcome in enumerate(outcomes):
        best = max(finished[j]) if finished[j] else None
        outcome.tokens = list(session.tokens(best[-1])) if best else []
    _tally(stats, session)
    return outcomes
