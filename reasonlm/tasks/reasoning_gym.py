"""reasoning-gym importer (optional extra: pip install reasonlm[gym], pins reasoning-gym==0.1.25).

reasoning-gym generates problems with answers but mostly without worked solutions, so the gold
steps come from its metadata:

  gsm_symbolic (templated GSM8K-style problems): `metadata["answer_cot"]`, a worked solution
      ending '#### N'. Every non-empty line before '####' is a step, kept as written; the
      equations in it are found by gsm8k.find_equations (units, currency and 'x' tolerated):
          Robert dropped his pebbles and was left with 72*0.5=36 pebbles.
          He searched and found some of his lost pebbles, getting him back to 36+17=53 pebbles.
      n_steps = number of equations found. Checked like GSM8K: equations true, the last one
      gives the answer. A solution done in algebra ('2x+100=184') has no checkable equation and
      is kept with n_steps=0: only its answer is verified (about 1 in 50 records).
  chain_sum, basic_arithmetic, decimal_chain_sum, products: `metadata["expression"]`
      ('-1515 / 5 + -( -2842 * -5436 ) * -6892') is parsed by expressions.parse_expression and
      traced by arithmetic.gold_steps, one reduction per line, innermost first:
          -1515/5=-303
          -2842*-5436=15449112
          0-15449112=-15449112        (unary minus of a bracket is written 0-x)
          -15449112*-6892=106475279904
          -303+106475279904=106475279601
      n_steps = number of operations. Checked like the arithmetic family, by replaying the steps
      on the expression (any valid order of reductions is accepted).

Every record is verified before it is kept: our checker must accept the gold steps
(`bad_annotation` otherwise), our exact value must equal reasoning-gym's answer and its
`score_answer` must give exactly 1.0 (`final_mismatch` otherwise; score_answer gives partial
credit, e.g. 0.75 for an answer with extra text, and only full marks count), and records without
the metadata we need are `malformed` (skipped and counted, or with `on_error="raise"` a ValueError
naming the record). reasoning-gym's basic_arithmetic truncates some divisions
(e.g. '-1 / -27' answered '-1'), so a few of its records are dropped as final_mismatch.
"""
from __future__ import annotations

from collections.abc import Sequence

from reasonlm.answer import format_number, normalize_number
from reasonlm.example import Example
from reasonlm.tasks.arithmetic import ArithmeticChain, gold_steps
from reasonlm.tasks.base import Check, Importer, Rejected, check_on_error, new_load_report
from reasonlm.tasks.expressions import parse_expression, tree_value
from reasonlm.tasks.gsm8k import check_equation_steps, find_equations

COT_TASKS = ("gsm_symbolic",)
EXPRESSION_TASKS = ("chain_sum", "basic_arithmetic", "decimal_chain_sum", "products")
_ARITHMETIC = ArithmeticChain()  # its checker replays steps on any expression (checkers read no knobs)


def _reasoning_gym():
    try:
        import reasoning_gym  # an optional extra: only this importer needs it
    except ImportError:
        raise ValueError("the reasoning_gym importer needs an optional extra: pip install reasonlm[gym] "
                         "(reasoning-gym==0.1.25)") from None
    return reasoning_gym


class ReasoningGym(Importer):
    name = "reasoning_gym"
    license = "Apache-2.0 (reasoning-gym)"

    def __init__(self, name: str = "gsm_symbolic", size: int = 100, seed: int = 0, config: dict | None = None,
                 on_error: str = "skip"):
        if name not in COT_TASKS + EXPRESSION_TASKS:
            raise ValueError(f"reasoning_gym task {name!r} is not supported; supported: "
                             f"{', '.join(COT_TASKS + EXPRESSION_TASKS)}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if config is not None and not isinstance(config, dict):
            raise ValueError(f"config must be a mapping of reasoning-gym settings, got {config!r}")
        self.task, self.size, self.seed, self.config = name, size, seed, dict(config or {})
        self.on_error = check_on_error(on_error)

    # --- loading ---------------------------------------------------------------------------
    def load(self) -> tuple[list[Example], dict]:
        rg = _reasoning_gym()
        try:
            dataset = rg.create_dataset(self.task, size=self.size, seed=self.seed, **self.config)
        except Exception as e:  # unknown settings or values: report them as one line
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise ValueError(f"reasoning_gym.create_dataset({self.task!r}, config={self.config}) failed: {first}") from None
        report = new_load_report()
        examples = []
        for index, entry in enumerate(dataset):
            report["read"] += 1
            try:
                example = self._to_example(entry, index)
                if dataset.score_answer(example.answer, entry) != 1.0:  # partial credit is not agreement
                    raise Rejected("final_mismatch", "reasoning_gym's score_answer < 1.0")
            except Rejected as r:
                if r.kind == "malformed" and self.on_error == "raise":
                    raise ValueError(f"reasoning_gym/{self.task} record {index}: malformed record: {r.why}") from None
                report["rejected"][r.kind] += 1
                continue
            examples.append(example)
        report["kept"] = len(examples)
        return examples, report

    def _to_example(self, entry: dict, index: int) -> Example:
        meta = entry.get("metadata") or {}
        question, answer = entry.get("question"), entry.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            raise Rejected("malformed", "no question or answer")
        source = {"source": f"reasoning_gym/{self.task}", "index": index}
        if self.task in COT_TASKS:
            cot = meta.get("answer_cot")
            if not isinstance(cot, str):
                raise Rejected("malformed", "no answer_cot")
            body, mark, final = cot.rpartition("####")
            steps = [line.strip() for line in body.splitlines() if line.strip()]
            value = normalize_number(final)
            if not mark or not steps or value is None:
                raise Rejected("malformed", "answer_cot has no reasoning or no '#### N' line")
            equations = [eq for line in steps for eq in find_equations(line)]
            example = Example(question, format_number(value), tuple(steps), len(equations), self.name,
                              meta={**source, "kind": "cot"})
        else:
            expression = meta.get("expression")
            tree = parse_expression(expression) if isinstance(expression, str) else None
            value = tree_value(tree) if tree is not None else None
            if value is None:
                raise Rejected("malformed", "no expression our parser reads")
            steps = gold_steps(tree)
            example = Example(question, format_number(value), tuple(steps), len(steps), self.name,
                              meta={**source, "kind": "expression", "expression": expression})
        if normalize_number(answer) != value:
            raise Rejected("final_mismatch", f"reasoning_gym says {answer!r}, we get {format_number(value)}")
        if not self.check(example, example.steps, example.answer).chain_valid:
            raise Rejected("bad_annotation", "the gold steps do not pass our checker")
        return example

    # --- checking --------------------------------------------------------------------------
    def check(self, example: Example, steps: Sequence[str], answer: str | None) -> Check:
        """Expression records replay the steps on meta['expression']; worked solutions are checked like GSM8K."""
        if example.meta.get("kind") == "expression":
            return _ARITHMETIC.check(Example(example.meta["expression"], example.answer), steps, answer)
        return check_equation_steps(example, steps, answer)

    def gold_free(self, example: Example) -> str:
        """Expression records replay steps on meta['expression']; worked solutions are calculator-checked."""
        return "steps" if example.meta.get("kind") == "expression" else "calculator"

