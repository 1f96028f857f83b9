"""Rewards for RL: the task checker's verdict on a completion, turned into per-token credit.

    rollout = score(task, example, text, truncated)        # a Rollout: steps ok, answer right, chain valid
    assign_credit(group, cfg, tokenizer)                   # advantages (grpo) or kept tokens (expert iteration)
    preflight(task, cfg[, problems])                       # gold scores exactly 1, corrupted copies below 1

The formulas (outcome and process advantages) and a worked example are in reasonlm/rl/__init__.py's
docstring; this module is them in code. The verdict is reasonlm/verdict.py's, as eval's and
chat's: a checker error is not caught, so a checker that raises stops the run instead of
quietly paying 0.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

from reasonlm.answer import FINAL_MARK, render_completion
from reasonlm.config import RLConfig
from reasonlm.example import Example
from reasonlm.sources import new_problem
from reasonlm.verdict import judge

EPS = 1e-4


class RewardError(ValueError):
    """A reward that cannot be trusted (the preflight failed), as one line."""


# --- the verdict on one completion -----------------------------------------------------------
@dataclass
class Rollout:
    prompt: list[int]
    completion: list[int]  # sampled ids, with the stop token when the completion ended by itself
    text: str
    truncated: bool
    ok: list[int]  # valid-prefix verdict of every step (1 up to the first wrong step, then 0)
    correct: bool  # the final answer is right
    valid: bool  # right answer through a fully valid chain, not truncated
    reward: float = 0.0  # the outcome reward (logged for both rewards)
    advantages: list[float] | None = None  # one per completion token (grpo)
    kept: list[bool] | None = None  # completion tokens trained on (expert iteration); None = not kept


@dataclass
class Group:
    example: Example
    attempts: int
    rollouts: list[Rollout]


def score(task, example: Example, text: str, truncated: bool, truncation_penalty: float = 0.0,
          prompt: list[int] = (), completion: list[int] = ()) -> Rollout:
    """The checker's verdict on one completion (verdict.judge), as RL's rollout: the valid prefix
    of its steps, the answer's verdict, and the outcome reward (1 for a right answer, else 0;
    -truncation_penalty for a truncated completion). A checker error stops the run."""
    verdict = judge(task, example, text)
    correct = verdict.check.answer_correct
    reward = -truncation_penalty if truncated else float(correct)
    return Rollout(list(prompt), list(completion), text, truncated, verdict.valid_prefix, correct,
                   correct and verdict.check.chain_valid and not truncated, reward)


# --- credit ----------------------------------------------------------------------------------
def assign_credit(group: Group, cfg: RLConfig, tokenizer) -> None:
    """Per-token advantages (grpo) or the tokens trained on (expert iteration) of every rollout."""
    lines = [token_lines(tokenizer, s.completion, s.text) for s in group.rollouts]
    if cfg.algorithm == "expert_iteration":
        for s, line_of in zip(group.rollouts, lines):
            if s.valid:
                s.kept = [True] * len(s.completion)
            elif cfg.keep_valid_prefix and sum(s.ok):  # the lines before the first wrong step, no answer
                last = max(t for t, j in enumerate(line_of) if 1 <= j <= sum(s.ok))
                s.kept = [t <= last for t in range(len(s.completion))]
        return
    if cfg.reward == "outcome":
        adv = group_advantages([s.reward for s in group.rollouts], cfg.scale_rewards)
        for s, a in zip(group.rollouts, adv):
            s.advantages = [a] * len(s.completion)
        return
    steps, answer = process_advantages([s.ok for s in group.rollouts], [float(s.valid) for s in group.rollouts],
                                       cfg.scale_rewards)
    for s, line_of, step_adv, ans in zip(group.rollouts, lines, steps, answer):
        s.advantages = [step_adv[j - 1] if 0 < j <= len(step_adv) else ans for j in line_of]


def token_lines(tokenizer, ids: list[int], text: str) -> list[int]:
    """For every completion token, the step of `text` (the scored completion) it belongs to
    (1..k, as parse_completion numbers the lines before the answer mark), or 0 (the answer line,
    anything after it, the end-of-turn token, blank lines). A token belongs to the line holding
    its last character; a step's line includes its line break. Character positions come from
    decoding the tokens incrementally."""
    pieces = tokenizer.batch_decode([[t] for t in ids])
    full = tokenizer.decode(ids)
    if "".join(pieces) == full:  # every token decodes on its own (always for ASCII steps): lengths add up
        ends, total = [], 0
        for piece in pieces:
            total += len(piece)
            ends.append(total)
    else:  # a multi-byte character split over tokens: decode every prefix
        ends = [len(tokenizer.decode(ids[:t + 1])) for t in range(len(ids))]
    mark = text.find(FINAL_MARK)
    body = text[:mark] if mark >= 0 else text
    line_at, step, pos = [0] * len(body), 0, 0
    for line in body.splitlines(keepends=True):
        if line.strip():
            step += 1
            line_at[pos:pos + len(line)] = [step] * len(line)
        pos += len(line)
    return [line_at[e - 1] if 0 < e <= len(body) else 0 for e in ends]


def group_advantages(rewards: list[float], scale: bool) -> list[float]:
    """R[i] - mean(R), divided by std(R) + eps with scale; all zeros for a group scored alike."""
    r = torch.tensor(rewards, dtype=torch.float64)
    a = r - r.mean()
    if scale:
        a = a / (r.std(unbiased=False) + EPS)
    return a.tolist()


def process_advantages(ok: list[list[int]], valid: list[float], scale: bool) -> tuple[list[list[float]], list[float]]:
    """(advantage of every step of every completion, advantage of every answer line): see the docstring."""
    width = max((len(o) for o in ok), default=0)
    grid = torch.tensor([o + [0] * (width - len(o)) for o in ok], dtype=torch.float64).reshape(len(ok), width)
    step_adv = grid - grid.mean(0)
    if scale:
        step_adv = step_adv / (grid.std(0, unbiased=False) + EPS)
    return [row[:len(o)] for row, o in zip(step_adv.tolist(), ok)], group_advantages(valid, scale)


def has_signal(group: Group, cfg: RLConfig) -> bool:
    if cfg.algorithm == "expert_iteration":
        return any(s.kept for s in group.rollouts)
    return any(a != 0 for s in group.rollouts for a in s.advantages)


# --- safety: the reward preflight --------------------------------------------------------------
def preflight(task, cfg: RLConfig, problems: list[Example] | None = None) -> None:
    """Gold solutions must score exactly 1 and corrupted ones below 1 under the reward the run
    uses, through the same `score` as training; otherwise stop with the task and the case.
    `problems`: an importer's records (a seeded sample of them is checked); None = generate them."""
    rng = random.Random(cfg.seed + 99_991)
    lo, hi = cfg.n_steps
    if problems is None:
        sample = [new_problem(task, rng, lo + k % (hi - lo + 1), f"preflight-{k}") for k in range(cfg.preflight_problems)]
    else:
        sample = rng.sample(problems, min(cfg.preflight_problems, len(problems)))
    for ex in sample:
        if not ex.steps and cfg.reward == "process":
            raise RewardError(f"task {task.name}: its problems have no steps to check, so reward process has "
                              "nothing to credit; use rl.reward=outcome or a step-by-step family")
        cases = {"gold solution": [(list(ex.steps), ex.answer)],
                 "a wrong answer": [(list(ex.steps), corrupt(ex.answer))],
                 "no answer line": [(list(ex.steps), None)],
                 # one step corrupted at a time; the case scores its lowest reward, so a checker that
                 # accepts prose lines (GSM8K's) passes when it catches the corrupted equations
                 "a wrong step": [([corrupt(t) if i == j else t for i, t in enumerate(ex.steps)], ex.answer)
                                  for j in range(len(ex.steps))]}
        for case, variants in cases.items():
            if not variants:
                continue
            reward = min(preflight_reward(task, ex, steps, answer, cfg.reward) for steps, answer in variants)
            if case == "gold solution" and reward != 1:
                raise RewardError(f"reward preflight: task {task.name} scores a gold solution {reward}, not 1 "
                                  f"(problem {ex.question!r})")
            if case != "gold solution" and reward >= 1 and (cfg.reward == "process" or case != "a wrong step"):
                hint = " (reward process needs a checker that judges every step)" if case == "a wrong step" else ""
                raise RewardError(f"reward preflight: task {task.name} gives full reward to {case}{hint} "
                                  f"(problem {ex.question!r})")


def preflight_reward(task, ex: Example, steps: list[str], answer: str | None, reward: str) -> float:
    """The reward `score` gives this solution: the outcome, or (process) its lowest step credit."""
    text = render_completion(steps, answer) if answer is not None else "\n".join(steps)
    s = score(task, ex, text, truncated=False)
    return s.reward if reward == "outcome" else min([*s.ok, int(s.valid)]) if s.ok else 0.0


def corrupt(text: str) -> str:
    """The text with its last digit changed (or a digit appended when it has none)."""
    m = list(re.finditer(r"\d", text))
    if not m:
        return text + "1"
    i = m[-1].start()
    return text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1:]
