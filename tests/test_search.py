"""Checker-guided decoding (reasonlm/search.py): the gold is never seen, a rejected line is resampled
and a right one kept, step_retry without retries is greedy, the prompt is prefilled once, bad
settings are one line."""
import io
import json
import random
from dataclasses import replace

import pytest
import torch

from reasonlm import chat, cli, search
from reasonlm.chat import display
from reasonlm.config import ConfigError, EvalConfig, SearchConfig
from reasonlm.engine import OTHERS, KVCacheEngine, Unit, engine_for
from reasonlm.evaluate import runner
from reasonlm.example import Example
from reasonlm.sources import Source
from reasonlm.tasks import get_task
from reasonlm.verdict import judge_lines
from tests.eval_helpers import toy_dir, write_suite  # noqa: F401 (fixtures)
from tests.helpers import TINY_TASK
from reasonlm.tasks.base import Check
from tests.test_engine import prompts, random_model

torch.set_num_threads(1)
GSM = get_task("gsm8k", path="unused.jsonl")
ARITH = get_task("arithmetic", **TINY_TASK)


# --- a scripted engine: lines written by a script, so what the search does with them is exact ---
class ScriptedEngine:
    """Writes `script[question][line]`: variants[0] for a greedy draw, then variants[1], [2], ... for the
    successive sampled draws of that line (cycling). The last line ends the answer (a stop)."""
    script: dict = {}
    tokenizer = None
    context_size = 512

    def stream(self, seed=0):  # chat opens one; the search path does not use it
        return None

    def __init__(self, model=None, pad_id=0, stop_ids=(), decode=None):
        self.tok = ScriptedEngine.tokenizer
        self.stop_ids = set(stop_ids)
        self.decode = lambda ids: self.tok.decode(ids, skip_special_tokens=True)

    def encode(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def question(self, prompt):
        text = self.decode(prompt)
        return next(q for q in self.script if q in text)

    def generate(self, prompts, params):
        """Whole answers: the greedy one, or the k-th sampled one (variant 1 + k mod the rest) per question."""
        outs, draws = [], {}
        for prompt in prompts:
            q = self.question(prompt)
            lines, pick = self.script[q], 0
            if params.temperature > 0:
                k = draws[q] = draws.get(q, -1) + 1
                pick = 1 + k % (max(len(v) for v in lines) - 1)
            outs.append(self.encode("\n".join(v[min(pick, len(v) - 1)] for v in lines)))
        return outs

    def rows(self, prompts, budgets, top_p=1.0, stop_strings=()):
        return ScriptedSession(self, prompts, budgets)


class ScriptedSession:
    def __init__(self, engine, prompts, budgets):
        self.engine, self.budgets = engine, list(budgets)
        self.questions = [engine.question(p) for p in prompts]
        self.out = [[] for _ in prompts]
        self.draws: dict = {}  # (question, line) -> sampled draws so far
        self.stats = {"prefills": 1, "prefill_tokens": sum(map(len, prompts)), "steps": 0, "row_steps": 0}

    def tokens(self, row):
        return self.out[row]

    def fork(self, row):
        self.out.append(list(self.out[row]))
        self.questions.append(self.questions[row])
        self.budgets.append(self.budgets[row])
        return len(self.out) - 1

    def close(self, row):
        pass

    def rewind(self, row, length):
        del self.out[row][length:]

    def extend(self, row, tokens):
        self.out[row] += tokens

    def ends_line(self, token):
        return "\n" in self.engine.decode([token])

    def decode(self, rows, temperatures, seeds, until="all"):
        units = {}
        for row, t in zip(rows, temperatures):
            q = self.questions[row]
            line = self.engine.decode(self.out[row]).count("\n")
            variants = ScriptedEngine.script[q][line]
            k = 0
            if t > 0:
                k = self.draws.get((q, line), 0)
                self.draws[(q, line)] = k + 1
                k = 1 + k % (len(variants) - 1) if len(variants) > 1 else 0
            last = line == len(ScriptedEngine.script[q]) - 1
            tokens = self.engine.encode(variants[k] + ("" if last else "\n"))
            self.out[row] += tokens
            units[row] = Unit(tokens, logprob=-float(k), end="stop" if last else "line")
        return units


@pytest.fixture
def scripted(toy):
    ScriptedEngine.tokenizer = toy[1]
    return ScriptedEngine()


def problem(engine, question, checker, budget=200, seed=0):
    return search.Problem(engine.encode(f"Q: {question}\nA:"), budget, seed, checker)


def text(engine, outcome):
    return engine.decode(outcome.tokens)


QUESTION = "Tom has 3 bags of 4 apples and eats 2. How many apples are left?"


def test_a_false_equation_is_resampled_and_a_true_one_kept(scripted):
    """The calculator check on a GSM8K-style problem, from the question alone."""
    ScriptedEngine.script = {QUESTION: [["He has 3*4=13 apples.", "He has 3*4=12 apples."],
                                        ["He has 12-2=10 left.", "He has 12-2=11 left."], ["#### 10"]]}
    checker = search.checker_for(GSM, Example(QUESTION, ""))
    cfg = SearchConfig(method="step_retry", propose="sample", retries=2)
    [out] = search.run(scripted, [problem(scripted, QUESTION, checker)], cfg)
    assert text(scripted, out) == "He has 3*4=12 apples.\nHe has 12-2=10 left.\n#### 10"
    assert out.retried == 1 and out.gave_up == 0
    assert out.rejected == [search.Rejected(1, "He has 3*4=13 apples.\n", "step 1 is wrong")]
    greedy_lines = len(scripted.encode("He has 3*4=13 apples.\n"))
    assert out.generated == len(out.tokens) + greedy_lines  # the rejected line is paid for


def test_retries_exhausted_keeps_the_greedy_line_or_stops(scripted):
    ScriptedEngine.script = {QUESTION: [["He has 3*4=12 apples.", "He has 3*4=12 apples in all."],
                                        ["He has 12-2=9 left.", "He has 12-2=8 left."], ["#### 9"]]}
    checker = search.checker_for(GSM, Example(QUESTION, ""))
    go_on = SearchConfig(method="step_retry", propose="sample", retries=1, backup=0)
    [out] = search.run(scripted, [problem(scripted, QUESTION, checker)], go_on)
    assert text(scripted, out) == "He has 3*4=12 apples.\nHe has 12-2=9 left.\n#### 9"  # greedy from the failure on
    assert out.gave_up == 1 and out.retried == 1 and len(out.rejected) == 2
    [stop] = search.run(scripted, [problem(scripted, QUESTION, checker)], replace(go_on, on_fail="stop"))
    assert text(scripted, stop) == "He has 3*4=12 apples.\n"
    # backing up resamples the line before (never its old text) and tries the failing line again
    [back] = search.run(scripted, [problem(scripted, QUESTION, checker)], replace(go_on, backup=1))
    assert text(scripted, back) == "He has 3*4=12 apples in all.\nHe has 12-2=9 left.\n#### 9"
    assert back.retried == 3 and back.gave_up == 1  # line 2 again, its resample, then the backed-up line


def test_candidates_keep_the_valid_line_the_model_finds_most_likely(scripted):
    ScriptedEngine.script = {QUESTION: [["He has 3*4=13 apples.", "He has 3*4=14.", "So 3*4=12.", "He has 3*4=12."],
                                        ["#### 12"]]}
    checker = search.checker_for(GSM, Example(QUESTION, ""))
    cfg = SearchConfig(method="step_retry", propose="sample", retries=1, candidates=3)
    [out] = search.run(scripted, [problem(scripted, QUESTION, checker)], cfg)
    assert text(scripted, out) == "So 3*4=12.\n#### 12"  # logprob -2 beats -3
    assert out.retried == 1 and [r.text for r in out.rejected] == ["He has 3*4=13 apples.\n", "He has 3*4=14.\n"]


def test_best_of_n_prefers_a_valid_chain_and_majority_the_common_answer(scripted):
    """Samples 12, 13, 13, 12, 13, 13 (the script's sampled variants in turn): 12 is the minority, and the
    only answer reached through true equations."""
    ScriptedEngine.script = {QUESTION: [["x", "3*4=12", "3*4=13", "3*4=13"], ["", "#### 12", "#### 13", "#### 13"]]}
    checker = search.checker_for(GSM, Example(QUESTION, ""))
    p = [problem(scripted, QUESTION, checker)]
    [best] = search.run(scripted, p, SearchConfig(method="best_of_n", n=6))
    [majority] = search.run(scripted, p, SearchConfig(method="majority", k=6))
    assert text(scripted, best) == "3*4=12\n#### 12"
    assert text(scripted, majority) == "3*4=13\n#### 13"
    assert majority.samples == best.samples == 6 and majority.generated == best.generated == 6 * len(best.tokens)


def test_step_beam_finds_the_valid_chain(scripted):
    ScriptedEngine.script = {"2+3+1": [["2+3=6", "2+3=5"], ["5+1=6", "5+1=7"], ["#### 6"]]}
    example = Example("2+3+1", "")
    checker = search.checker_for(ARITH, example)
    [out] = search.run(scripted, [problem(scripted, "2+3+1", checker)],
                       SearchConfig(method="step_beam", width=2, expand=2))
    assert text(scripted, out) == "2+3=5\n5+1=6\n#### 6"
    assert any(r.why == "step 1 is wrong" for r in out.rejected)


def run_jobs(examples, tok, cfg, model, monkeypatch):
    """Eval's run_batch on `examples`, decoding with the scripted engine (model None) or the real one."""
    if model is None:
        monkeypatch.setattr(runner, "engine_for", lambda model, tokenizer: ScriptedEngine())
    else:
        monkeypatch.undo()
    jobs = runner.plan_jobs([Source("s", "task", examples, task=ARITH)], tok, cfg, "cot")
    return runner.run_batch(model, tok, jobs, cfg)


@pytest.mark.parametrize("method", ["best_of_n", "step_retry", "step_retry_branch", "step_beam"])
def test_poisoned_gold_answers_give_identical_search_outputs(toy, method, monkeypatch):
    """Every gold answer and gold step replaced with a poisoned value: the same outputs, on a
    scripted engine (whose lines the checker rejects and accepts) and on the real toy model."""
    model, tok = toy
    ScriptedEngine.tokenizer = tok
    rng = random.Random(1)
    clean = [replace(ARITH.generate(rng, 3), id=f"p{i}") for i in range(4)]
    poisoned = [replace(ex, answer="31337", steps=("1+1=3",)) for ex in clean]
    ScriptedEngine.script = {ex.question: [[f"{s.split('=')[0]}={int(s.split('=')[1]) + 1}", s] for s in ex.steps]
                             + [[f"#### {ex.answer}"]] for ex in clean}
    propose = "branch" if method.endswith("_branch") else "sample"  # branching reads the real model's picks
    cfg = EvalConfig(search=SearchConfig(method=method.removesuffix("_branch"), propose=propose, retries=2, n=3),
                     max_new_tokens=40)
    for engine_model in (None, model) if propose == "sample" else (model,):
        a = run_jobs(clean, tok, cfg, engine_model, monkeypatch)
        b = run_jobs(poisoned, tok, cfg, engine_model, monkeypatch)
        keys = ("output", "generated_tokens", "steps_retried", "rejected_steps", "gave_up")
        assert [{k: s[k] for k in keys} for s in a] == [{k: s[k] for k in keys} for s in b]
        if engine_model is None:
            assert all(s["correct"] for s in a) and not any(s["correct"] for s in b)  # scoring does read the gold
            if method == "step_retry":
                assert all(s["steps_retried"] == 3 and len(s["rejected_steps"]) == 3 for s in a)


def test_step_retry_without_retries_is_greedy_on_the_real_engine(toy):
    model, tok = toy
    rng = random.Random(2)
    examples = [ARITH.generate(rng, rng.randint(1, 4)) for _ in range(6)]
    for fast in (True, False):
        engine = engine_for(model, tok, fast=fast)
        problems = [search.Problem(tok(f"Q: {ex.question}\nA:", add_special_tokens=False)["input_ids"], 24 + 4 * i,
                                   i, search.checker_for(ARITH, ex)) for i, ex in enumerate(examples)]
        greedy = search.run(engine, problems, SearchConfig())
        stepped = search.run(engine, problems, SearchConfig(method="step_retry", retries=0, backup=0),
                             batch_size=4)
        assert [o.tokens for o in stepped] == [o.tokens for o in greedy]


def test_a_units_picks_are_the_models_own_probabilities():
    """Unit.picks: per token, its log-probability and the engine.OTHERS most likely other tokens,
    as the model's forward gives them."""
    model = random_model("llama-gqa")
    decode = lambda ids: "".join("\n" if t % 7 == 0 else "x" for t in ids)
    prompt = prompts(1, seed=3)[0]
    engine = KVCacheEngine(model, 0, set(), decode=decode)  # no stop token: the line ends at a newline
    unit = engine.rows([prompt], [40]).decode([0], [0.0], [0])[0]
    assert len(unit.tokens) > 1 and len(unit.picks) == len(unit.tokens) + (unit.end == "stop")
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([prompt + unit.tokens])).logits[0, len(prompt) - 1:].float(), -1)
    for k, (logp, others) in enumerate(unit.picks[:len(unit.tokens)]):
        top = logps[k].topk(OTHERS + 1)
        assert top.indices[0] == unit.tokens[k] and logp == pytest.approx(top.values[0].item(), abs=1e-4)
        assert [o for _, o in others] == top.indices[1:].tolist()
        assert [lp for lp, _ in others] == pytest.approx(top.values[1:].tolist(), abs=1e-4)


def test_branch_tries_the_models_next_most_likely_line_first():
    """propose: branch: the first retry of a rejected line is the greedy line with the token where the
    model's other choice is most likely swapped for it, greedy to the line's end (computed here
    from the engine), not a sample; and no line is tried twice."""
    engine = KVCacheEngine(random_model("llama-gqa"), 0, set(), decode=lambda ids: "".join(
        "\n" if t % 7 == 0 else f"<{t}>" for t in ids))
    prompt = prompts(1, seed=3)[0]
    session = engine.rows([prompt], [40])
    first = session.decode([0], [0.0], [0])[0]
    assert first.end == "line"
    k, alt = max(((k, o) for k, (_, others) in enumerate(first.picks) for o in others[:1]
                  if o[1] not in engine.stop_ids and not session.ends_line(o[1])),
                 key=lambda ko: sum(lp for lp, _ in first.picks[:ko[0]]) + ko[1][0])
    session.rewind(0, k)
    session.extend(0, [alt[1]])
    session.decode([0], [0.0], [0])
    wanted = engine.decode(session.tokens(0))
    greedy_line = engine.decode(first.tokens)

    def checker(steps, answer):  # line 1 must be the branch; anything after it passes
        return Check(False, [s + "\n" == wanted for s in steps[:1]] + [True] * len(steps[1:]))
    cfg = SearchConfig(method="step_retry", propose="branch", retries=1, backup=0)
    [out] = search.run(engine, [search.Problem(prompt, 40, 0, checker)], cfg)
    assert engine.decode(out.tokens).startswith(wanted) and out.retried == 1 and out.gave_up == 0
    assert [r.text for r in out.rejected] == [greedy_line]
    [many] = search.run(engine, [search.Problem(prompt, 40, 0, lambda steps, answer: Check(False, [False] * len(steps)))],
                        replace(cfg, retries=6))
    tried = [r.text for r in many.rejected if r.step == 1]
    assert len(tried) == 7 and len(set(tried)) == 7 and many.gave_up == 1


@pytest.mark.parametrize("propose", ["sample", "branch"])
def test_step_retry_outputs_do_not_depend_on_the_batch_size(propose):
    """Problems join the session as others finish (batch_size 2 of 7 problems); every output is the
    one it gets in a batch of all of them."""
    engine = KVCacheEngine(random_model("llama-gqa"), 0, set(), decode=lambda ids: "".join(
        "\n" if t % 7 == 0 else f"<{t}>" for t in ids))
    checker = lambda steps, answer: Check(False, ["<3" not in line for line in steps])  # noqa: E731
    problems = [search.Problem(p, 30 + 3 * i, i, checker) for i, p in enumerate(prompts(7, seed=4))]
    cfg = SearchConfig(method="step_retry", propose=propose, retries=2)
    together = search.run(engine, problems, cfg, batch_size=64)
    stats: dict = {}
    joined = search.run(engine, problems, cfg, batch_size=2, stats=stats)
    assert [(o.tokens, o.generated, o.retried) for o in joined] == [(o.tokens, o.generated, o.retried) for o in together]
    assert any(o.retried for o in together) and stats["prefills"] > 1  # retries happened, and problems joined


def test_the_prompt_is_prefilled_once_and_a_rewind_feeds_one_token():
    """Cache reuse, counted: one prefill per session on the Llama decoder however many lines and
    rewinds; the general path re-prefills every call. Rewound greedy rows come back to the same text."""
    model = random_model("llama-gqa")
    decode = lambda ids: "".join("\n" if t % 5 == 0 else "x" for t in ids)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, 96, (int(n),), generator=g).tolist() for n in (5, 9, 7, 12)]
    results = {}
    for fast in (True, False):
        engine = KVCacheEngine(model, 0, {1}, decode=decode, fast=fast)
        session = engine.rows(prompts, [30] * 4)
        first = session.decode([0, 1, 2, 3], [0.0] * 4, [0] * 4)
        for row in range(4):
            session.rewind(row, 0)
        steps_before = session.stats["row_steps"]
        again = session.decode([0, 1, 2, 3], [0.0] * 4, [0] * 4)
        assert [u.tokens for u in again.values()] == [u.tokens for u in first.values()]
        session.decode([1, 3], [0.7, 0.7], [5, 6])
        results[fast] = session.stats, session.stats["row_steps"] - steps_before, sum(len(u.tokens) for u in again.values())
    (fast_stats, fast_fed, tokens), (slow_stats, _, _) = results[True], results[False]
    assert fast_stats["prefills"] == 1 and fast_stats["prefill_tokens"] == sum(map(len, prompts))
    assert fast_fed == tokens + 4  # one re-fed token per rewound row, not its prompt
    assert slow_stats["prefills"] == 3 and slow_stats["prefill_tokens"] > 2 * sum(map(len, prompts))


@pytest.mark.parametrize("settings, message", [
    ({"retries": -1}, "eval.search.retries must be >= 0, got -1"),
    ({"width": 0}, "eval.search.width must be >= 1, got 0"),
    ({"n": 0}, "eval.search.n must be >= 1, got 0"),
    ({"method": "beam"}, "eval.search.method must be 'greedy', 'majority', 'best_of_n', 'step_retry' or 'step_beam', "
                         "got 'beam'"),
])
def test_bad_search_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError) as e:
        SearchConfig(**settings)
    assert str(e.value) == message


def test_bad_search_on_the_command_line_is_one_line_and_exit_2(toy_dir, tmp_path, capsys):
    suite = write_suite(tmp_path / "s.yaml")
    answer_only = tmp_path / "mine.jsonl"
    answer_only.write_text(json.dumps({"q": "What is 2+3?", "a": "5"}) + "\n")
    cases = [(["--search", "nope"], "eval.search.method must be"),
             (["search.retries=-2", "--search", "step_retry"], "eval.search.retries must be >= 0, got -2"),
             ([], "is answer-only (its columns map no steps or solution): use greedy or majority")]
    answer_only_suite = write_suite(tmp_path / "a.yaml", sources=[{"file": str(answer_only), "columns": {
        "question": "q", "answer": "a"}, "name": "mine"}], search={"method": "step_retry"})
    for extra, message in cases:
        with pytest.raises(SystemExit) as e:
            cli.main(["eval", answer_only_suite if not extra else suite, "--model", toy_dir, *extra])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    # answer-only rows the spec cannot show: refused on load, before any model is read
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"question": "What is 2+3?", "answer": "5"}) + "\n")
    rows = write_suite(tmp_path / "r.yaml", sources=[{"file": str(plain), "name": "mine"}])
    with pytest.raises(SystemExit):
        cli.main(["eval", rows, "--model", str(tmp_path / "no-such-model"), "--search", "best_of_n"])
    err = capsys.readouterr().err.strip()
    assert "source 'mine' (task records, problem 'line1') is answer-only: it supports search methods greedy and " \
           "majority, not eval.search.method='best_of_n'" in err and len(err.splitlines()) == 1
    assert EvalConfig(sources=[{"file": "x.csv", "columns": {"question": "q"}}],
                      search=SearchConfig(method="majority")).search.method == "majority"


def test_eval_with_search_writes_compute_and_rejected_steps(toy, toy_dir, tmp_path, monkeypatch):
    _, tok = toy
    ScriptedEngine.tokenizer = tok
    monkeypatch.setattr(runner, "engine_for", lambda model, tokenizer: ScriptedEngine())
    path = tmp_path / "worked.jsonl"
    path.write_text(json.dumps({"question": QUESTION, "answer": "10", "steps": ["3*4=12", "12-2=10"]}) + "\n")
    ScriptedEngine.script = {QUESTION: [["He has 3*4=13 apples.", "He has 3*4=12 apples."], ["12-2=10"], ["#### 10"]]}
    suite = write_suite(tmp_path / "s.yaml", sources=[{"file": str(path), "name": "worked"}], max_new_tokens=60)
    cli.main(["eval", suite, "--model", toy_dir, "--out", str(tmp_path / "out"), "--search", "step_retry",
              "search.propose=sample"])  # the scripted engine's lines are sampled, not branched
    report = json.load(open(tmp_path / "out" / "report.json"))
    worked = report["splits"]["worked"]
    assert report["search"] == "step_retry" and worked["accuracy"] == 1.0 and worked["steps_retried_per_problem"] == 1
    sample = json.loads(open(tmp_path / "out" / "samples.jsonl").readline())
    assert sample["rejected_steps"] == [{"step": 1, "text": "He has 3*4=13 apples.\n", "why": "step 1 is wrong"}]
    assert worked["tokens_per_problem"] == sample["generated_tokens"] > sample["tokens"]
    md = open(tmp_path / "out" / "report.md").read()
    assert "search: step_retry (propose sample, retries 8" in md and "tokens/problem" in md and "steps retried/problem" in md


def test_chat_search_shows_the_rejected_line_struck_through_then_the_retry(scripted, toy):
    ScriptedEngine.script = {QUESTION: [["He has 3*4=13 apples.", "He has 3*4=12 apples."], ["#### 12"]]}
    out = io.StringIO()
    c = chat.Chat(scripted, toy[1], chat.Settings(), out=out)
    c.command("/search nope")
    assert "usage: /search METHOD" in out.getvalue()
    c.command("/search step_retry retries=nope")
    assert "eval.search.retries must be" in out.getvalue()
    c.command("/search step_retry propose=sample")  # the scripted engine's lines are sampled, not branched
    turn = c.ask(QUESTION)
    shown = out.getvalue()
    assert turn.text == "He has 3*4=12 apples.\n#### 12" and c.history[-1]["content"] == turn.text
    struck = f"{display.STRUCK}He has 3*4=13 apples.   (step 1 is wrong){display.RESET}"
    assert struck in shown and shown.index(struck) < shown.index("He has 3*4=12 apples.")
    assert "1 lines resampled" in shown


def test_bench_search_runs_on_a_toy_model(tmp_path, capsys):
    """eval/bench_search.py end to end at a tiny size: the JSON has every method's accuracy, interval,
    tokens per problem and cost relative to greedy, and the picture is drawn."""
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(
        "bench_search", os.path.join(os.path.dirname(os.path.dirname(__file__)), "eval", "bench_search.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--toy", "--per-steps", "1", "--methods", "greedy,majority@4,retry r2,beam w2e2", "--threads", "1",
                "--out", str(tmp_path)])
    report = json.load(open(tmp_path / "bench_search.json"))
    for adapter in ("toy-a", "toy-b"):
        results = report["results"][adapter]
        assert list(results) == ["greedy", "majority@4", "retry r2", "beam w2e2"]
        assert results["greedy"]["overall"]["tokens_vs_greedy"] == 1.0
        assert results["majority@4"]["overall"]["tokens_vs_greedy"] == 4.0  # 4 samples, each to the budget
        assert results["retry r2"]["session"]["prefills"] == 1
        for r in results.values():
            assert r["overall"]["n"] == 2 and set(r["by_steps"]) == {"2", "3"} and len(r["overall"]["ci"]) == 2
    assert (tmp_path / "bench_search.png").stat().st_size > 1000
    assert "| toy-b | beam w2e2 |" in capsys.readouterr().out


def test_a_checker_that_raises_lets_the_line_pass_and_the_search_go_on(scripted):
    ScriptedEngine.script = {QUESTION: [["He has 3*4=13 apples."], ["#### 13"]]}

    def broken(steps, answer):
        raise KeyError("meta")
    [out] = search.run(scripted, [problem(scripted, QUESTION, broken)],
                       SearchConfig(method="step_retry"))
    assert scripted.decode(out.tokens) == "He has 3*4=13 apples.\n#### 13" and out.retried == 0
    assert judge_lines(broken, "1+1=3\n", final=False).why == "checker error KeyError"
