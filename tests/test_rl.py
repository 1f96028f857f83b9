"""The RL stage and its rewards: advantages, process credit, loss types, preflight, the updates, bad input."""
import copy
import dataclasses
import json
import random
import shutil

import pytest
import torch

from reasonlm import credit, rl
from reasonlm.rl import update
from reasonlm.rl.pool import ProblemPool
from reasonlm.credit import Rollout
from reasonlm.answer import encode_example, encode_prompt, end_of_turn, pad_token_id, prompt_messages, stop_token_ids
from reasonlm.config import ConfigError, CurriculumConfig, RLConfig, TrainConfig, load_recipe
from reasonlm.curriculum import Curriculum, CurriculumError, check_reach, longest
from reasonlm.engine import KVCacheEngine, dealt_to
from reasonlm.example import Example, render_target
from reasonlm.model import ModelError, attach_lora, check_adapter, load_adapter
from reasonlm.packing import use_packed_attention
from reasonlm.tasks import Check, get_task
from tests.helpers import TINY_TASK, ScriptedEngine, tiny_model_and_tokenizer

torch.set_num_threads(2)


def test_outcome_advantages_are_centred_and_zero_for_a_group_scored_alike():
    assert credit.group_advantages([1, 0, 0, 1], scale=False) == [0.5, -0.5, -0.5, 0.5]
    scaled = credit.group_advantages([1, 0, 0, 1], scale=True)
    assert scaled[0] == pytest.approx(1.0, abs=1e-3) and scaled[1] == pytest.approx(-1.0, abs=1e-3)
    assert credit.group_advantages([1, 1, 1], scale=True) == [0.0, 0.0, 0.0]
    assert credit.group_advantages([0, 0], scale=False) == [0.0, 0.0]


def test_process_advantages_match_the_worked_example_of_the_docstring():
    ok = [[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]]
    steps, answer = credit.process_advantages(ok, [1.0, 0.0, 0.0, 0.0], scale=False)
    assert steps == [pytest.approx(r) for r in ([.25, .5, .75], [.25, -.5, -.25], [.25, .5, -.25], [-.75, -.5, -.25])]
    assert answer == pytest.approx([.75, -.25, -.25, -.25])
    # a shorter completion has no advantage for steps it did not write; a missing step counts as not reached
    steps, _ = credit.process_advantages([[1, 1], [1]], [0.0, 0.0], scale=False)
    assert steps == [[0.0, 0.5], [0.0]]
    # every completion alike: no signal anywhere, scaled or not
    steps, answer = credit.process_advantages([[1, 0], [1, 0]], [0.0, 0.0], scale=True)
    assert steps == [[0.0, 0.0], [0.0, 0.0]] and answer == [0.0, 0.0]


def test_token_lines_map_every_token_to_its_step_or_the_answer_line(toy):
    _, tok = toy
    text = "1+2=3\n3+4=7\n#### 7"
    ids = tok(text + end_of_turn(tok), add_special_tokens=False)["input_ids"]
    lines = credit.token_lines(tok, ids, text)
    pieces = tok.batch_decode([[t] for t in ids])
    by_line = {}
    for piece, line in zip(pieces, lines):
        by_line[line] = by_line.get(line, "") + piece
    assert by_line == {1: "1+2=3\n", 2: "3+4=7\n", 0: "#### 7" + end_of_turn(tok)}


def test_process_credit_reaches_the_tokens_of_each_step(toy):
    _, tok = toy
    cfg = RLConfig(reward="process", num_generations=2)
    task = get_task("arithmetic", **TINY_TASK)
    ex = Example(question="1+2+4", answer="7", steps=("1+2=3", "3+4=7"), n_steps=2)
    group = credit.Group(ex, 0, [])
    for text in ("1+2=3\n3+4=7\n#### 7", "1+2=3\n3+4=8\n#### 8"):
        ids = tok(text + end_of_turn(tok), add_special_tokens=False)["input_ids"]
        group.rollouts.append(credit.score(task, ex, text, False, 0.0, [0], ids))
    credit.assign_credit(group, cfg, tok)
    right, wrong = group.rollouts
    assert right.ok == [1, 1] and wrong.ok == [1, 0] and right.valid and not wrong.valid
    lines = credit.token_lines(tok, right.completion, right.text)
    assert {a for a, j in zip(right.advantages, lines) if j == 1} == {0.0}  # both got step 1 right
    assert {a for a, j in zip(right.advantages, lines) if j == 2} == {0.5}
    assert {a for a, j in zip(right.advantages, lines) if j == 0} == {0.5}  # answer line and end of turn
    lines = credit.token_lines(tok, wrong.completion, wrong.text)
    assert {a for a, j in zip(wrong.advantages, lines) if j == 2} == {-0.5}


def test_each_loss_type_against_a_hand_computed_value():
    # two completions of 1 and 3 tokens; ratio 1 (logp == old), so each token's loss is -A
    adv = torch.tensor([[2.0, 0, 0], [1.0, 1.0, 1.0]])
    live = torch.tensor([[1.0, 0, 0], [1.0, 1.0, 1.0]])
    logp = torch.zeros(2, 3)
    for loss_type, expected in [("grpo", -(2.0 / 1 + 3.0 / 3) / 2),  # per-sequence mean, then mean
                                ("dr_grpo", -(2.0 + 3.0) / (2 * 10)),  # sum / (2 sequences x 10 tokens)
                                ("dapo", -(2.0 + 3.0) / 4)]:  # mean over the 4 tokens
        w = torch.tensor(update.token_weights([1, 3], loss_type, 10))[:, None] * live
        loss, clip = update.policy_loss(logp, logp, logp, adv, w, RLConfig(loss_type=loss_type))
        assert loss.item() == pytest.approx(expected) and clip["clipped_tokens"].sum() == 0


def test_the_clip_binds_beyond_epsilon_and_the_kl_adds_beta_k3():
    cfg = RLConfig(epsilon=0.2, beta=0.0)
    w, adv = torch.ones(1, 1), torch.ones(1, 1)
    loss, clip = update.policy_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1), torch.zeros(1, 1), adv, w, cfg)
    assert loss.item() == pytest.approx(-1.2) and clip["clipped_tokens"].sum() == 1
    cfg = RLConfig(beta=0.5)
    logp = torch.log(torch.tensor([[0.5]]))
    loss, _ = update.policy_loss(logp, logp, torch.zeros(1, 1), torch.zeros(1, 1), w, cfg)  # A = 0: only the KL
    q = -logp.item()
    assert loss.item() == pytest.approx(0.5 * (2.0 - q - 1))


def toy_policy(toy):
    model, tok = toy
    return attach_lora(model, TrainConfig(lora_r=4, lora_alpha=8)), tok


class _Accelerator:  # what the update needs of Accelerate, in one process
    num_processes, process_index, is_main_process = 1, 0, True
    backward = staticmethod(lambda loss: loss.backward())
    unwrap_model = staticmethod(lambda m: m)


def test_num_iterations_1_has_a_ratio_of_exactly_1_and_moves_the_weights(toy):
    model, tok = toy_policy(tiny_model_and_tokenizer())
    cfg = RLConfig(num_iterations=1, micro_batch_size=2, lr=1e-2)
    prompt = encode_prompt(tok, prompt_messages("1+2"))
    batch = []
    for text, a in (("1+2=3\n#### 3", 1.0), ("1+2=4\n#### 4", -1.0), ("#### 3", 0.5)):
        ids = tok(text + end_of_turn(tok), add_special_tokens=False)["input_ids"]
        batch.append(credit.Rollout(prompt, ids, text, False, [], True, True, advantages=[a] * len(ids)))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    stats = update.grpo_update(model, opt, batch, before, cfg, _Accelerator(), pad_id=pad_token_id(tok))
    assert stats["ratio_min"] == 1.0 and stats["ratio_max"] == 1.0 and stats["clip_fraction"] == 0.0
    assert stats["kl"] == 0.0  # the reference is the starting weights
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


class _AlwaysRight:
    """A broken reward: the checker says every answer is right."""
    name, imported = "broken", False  # a generated family (tasks.base.Family)

    def __init__(self):
        self.inner = get_task("arithmetic", **TINY_TASK)

    def generate(self, rng, n):
        return self.inner.generate(rng, n)

    def check(self, example, steps, answer):
        return self.inner.check(example, steps, example.answer)


class _NoStepChecker(_AlwaysRight):
    """A checker that judges the answer only: every step passes."""

    def check(self, example, steps, answer):
        verdict = self.inner.check(example, list(example.steps), answer)
        verdict.step_ok = [True] * len(steps)
        return verdict


def test_preflight_passes_the_real_checker_and_catches_broken_rewards():
    cfg = RLConfig(n_steps=[2, 4], preflight_problems=4)
    credit.preflight(get_task("arithmetic", **TINY_TASK), cfg)
    with pytest.raises(credit.RewardError, match="broken gives full reward to a wrong answer"):
        credit.preflight(_AlwaysRight(), cfg)
    with pytest.raises(credit.RewardError, match="a wrong step .*judges every step"):
        credit.preflight(_NoStepChecker(), RLConfig(n_steps=[2, 4], reward="process", preflight_problems=4))
    credit.preflight(_NoStepChecker(), RLConfig(n_steps=[2, 4], reward="outcome", preflight_problems=4))


def test_a_reward_that_raises_is_not_turned_into_0():
    class Raises(_AlwaysRight):
        def check(self, example, steps, answer):
            raise KeyError("meta")
    with pytest.raises(KeyError):
        credit.score(Raises(), Example(question="1+2", answer="3"), "#### 3", False)


def test_pool_retires_solved_problems_retries_unsolved_ones_and_resumes():
    cfg = RLConfig(n_steps=[2, 3], retries=1, seed=3)
    pool = ProblemPool(get_task("arithmetic", **TINY_TASK), cfg)
    first = pool.draw(4)
    assert all(2 <= ex.n_steps <= 3 and n == 0 for ex, n in first)
    pool.give_back(*first[0], solved=8, group=8)  # retired
    pool.give_back(*first[1], solved=0, group=8)  # comes back once
    again = pool.draw(4)
    assert again[0] == (first[1][0], 1) and pool.retired == 1
    pool.give_back(*again[0], solved=0, group=8)  # out of retries
    copy = ProblemPool(pool.task, cfg, pool.state())
    assert [ex for ex, _ in copy.draw(4)] == [ex for ex, _ in pool.draw(4)]


def test_replay_mixes_short_problems_into_the_fresh_ones():
    cfg = RLConfig(n_steps=[6, 7], replay_fraction=0.25, replay_steps=[2, 3], seed=1)
    drawn = [ex.n_steps for ex, _ in ProblemPool(get_task("arithmetic", **TINY_TASK), cfg).draw(400)]
    short = sum(n <= 3 for n in drawn)
    assert set(drawn) <= {2, 3, 6, 7} and 70 <= short <= 130  # 100 expected
    plain = [ex.n_steps for ex, _ in ProblemPool(get_task("arithmetic", **TINY_TASK), RLConfig(n_steps=[6, 7])).draw(50)]
    assert set(plain) <= {6, 7}


def test_the_probe_set_is_fixed_held_out_and_scored_greedily(toy):
    model, tok = toy
    task = get_task("arithmetic", **TINY_TASK)
    cfg = RLConfig(n_steps=[2, 3], probe_steps=[2, 3], probe_problems=20, max_completion_length=40)
    probe = rl.probe_set(task, tok, cfg)
    assert [ex.question for ex, _ in probe] == [ex.question for ex, _ in rl.probe_set(task, tok, cfg)]
    assert [ex.n_steps for ex, _ in probe] == [2] * 20 + [3] * 20
    trained = {ex.question for ex, _ in ProblemPool(task, cfg).draw(40)}
    assert len(trained & {ex.question for ex, _ in probe}) < 10  # another stream (short problems can coincide)
    engine = KVCacheEngine(model, tok.pad_token_id or 0, stop_token_ids(tok))
    accuracy = rl.run_probe(engine, tok, task, probe, cfg, _Accelerator())
    assert set(accuracy) == {"2", "3"}
    assert accuracy == rl.run_probe(engine, tok, task, probe, cfg, _Accelerator())  # greedy: the same policy, the same score
    # a policy that writes the worked solution of every 3-step problem and no answer to any 2-step
    # one scores exactly that
    script = {ex.question: render_target(ex, "cot") if ex.n_steps == 3 else "I do not know." for ex, _ in probe}
    scripted = ScriptedEngine(tok, script, model=model)
    assert rl.run_probe(scripted, tok, task, probe, cfg, _Accelerator()) == {"2": 0.0, "3": 1.0}


def curriculum_pool(start=(2, 3), max_=6, step=1, replay=0.25, grow_when=0.9, seed=0, state=None):
    cfg = RLConfig(probe_every=1, retries=0, seed=seed, curriculum=CurriculumConfig(
        start=list(start), max=max_, step=step, replay=replay, grow_when=grow_when, probe_problems=8))
    pool = rl.ProblemPool(get_task("arithmetic", **TINY_TASK), cfg, (state or {}).get("pool"), None,
                          Curriculum(cfg.curriculum, (state or {}).get("curriculum")))
    return cfg, pool


def test_a_frontier_probe_that_passes_grow_when_moves_the_range_and_one_that_does_not_does_not(toy):
    model, tok = toy
    cfg, pool = curriculum_pool(start=(2, 3))
    assert {ex.n_steps for ex, _ in pool.draw(40)} == {2, 3}  # no lengths left behind yet: all from the range
    probe = rl.probe_set(pool.task, tok, cfg, [3], cfg.curriculum.probe_problems)
    assert [ex.n_steps for ex, _ in probe] == [3] * 8
    # 7 of the 8 frontier problems solved (0.875 < 0.9): no move, and the record says so
    script = {ex.question: render_target(ex, "cot") if i else "I do not know." for i, (ex, _) in enumerate(probe)}
    record = rl.frontier_probe(ScriptedEngine(tok, script, model=model), tok, pool, cfg, _Accelerator(), 4)
    assert record == {"frontier": 3, "probe_accuracy": 0.875, "move": None} and pool.curriculum.range == [2, 3]
    # all 8 solved: the range moves up by one, logged with the round, both ranges and the accuracy
    script = {ex.question: render_target(ex, "cot") for ex, _ in probe}
    record = rl.frontier_probe(ScriptedEngine(tok, script, model=model), tok, pool, cfg, _Accelerator(), 5)
    move = {"round": 5, "from": [2, 3], "to": [3, 4], "probe_accuracy": 1.0}
    assert record == {"frontier": 3, "probe_accuracy": 1.0, "move": move}
    assert pool.curriculum.range == [3, 4] and pool.curriculum.moves == [move]
    # the next probe is of the new frontier's 4-step problems, which this script cannot solve: no move
    script |= {ex.question: "I do not know." for ex, _ in rl.probe_set(pool.task, tok, cfg, [4], 8)}
    record = rl.frontier_probe(ScriptedEngine(tok, script, model=model), tok, pool, cfg, _Accelerator(), 6)
    assert record == {"frontier": 4, "probe_accuracy": 0.0, "move": None} and pool.curriculum.range == [3, 4]


def test_the_range_never_passes_max_and_moves_by_step():
    cur = Curriculum(CurriculumConfig(start=[3, 5], step=3, max=10, grow_when=0.5))
    assert cur.after_probe(1, 0.49) is None and cur.range == [3, 5]
    assert cur.after_probe(2, 0.5)["to"] == [6, 8]
    assert cur.after_probe(3, 1.0)["to"] == [8, 10]  # the last move is cut short at max
    assert cur.after_probe(4, 1.0) is None and cur.after_probe(5, 1.0) is None
    assert cur.range == [8, 10] and [m["round"] for m in cur.moves] == [2, 3]


def test_replay_keeps_the_lengths_left_behind_in_every_rounds_draw():
    cfg, pool = curriculum_pool(start=(2, 3), replay=0.25)
    for rnd in range(3):
        pool.curriculum.after_probe(rnd, 1.0)
    assert pool.curriculum.range == [5, 6]
    for _ in range(25):  # rounds of 8 fresh problems: 2 of each from [2, 4], the rest from the range
        lengths = [ex.n_steps for ex, _ in pool.draw(8)]
        assert sum(2 <= n <= 4 for n in lengths) == 2 and sum(5 <= n <= 6 for n in lengths) == 6, lengths
    # every left-behind length comes up, and nothing shorter than the start
    drawn = [ex.n_steps for ex, _ in pool.draw(200)]
    assert set(drawn) == {2, 3, 4, 5, 6}
    # rl.replay_fraction's short problems (rl.replay_steps) still mix in with a curriculum
    cfg = dataclasses.replace(cfg, replay_fraction=0.5, replay_steps=[1, 1])
    mixed = rl.ProblemPool(pool.task, cfg, None, None, Curriculum(cfg.curriculum))
    assert {ex.n_steps for ex, _ in mixed.draw(40)} == {1, 2, 3}


def test_the_curriculum_state_round_trips_through_a_checkpoint():
    cfg, pool = curriculum_pool(start=(2, 3), seed=4)
    pool.draw(5)
    pool.curriculum.after_probe(3, 0.95)
    state = json.loads(json.dumps({"pool": pool.state(), "curriculum": pool.curriculum.state()}))  # as checkpoints keep it
    _, again = curriculum_pool(start=(2, 3), seed=4, state=state)
    assert again.curriculum.range == [3, 4] and again.curriculum.moves == pool.curriculum.moves
    assert [ex for ex, _ in again.draw(12)] == [ex for ex, _ in pool.draw(12)]
    assert again.curriculum.summary() == {"start": [2, 3], "range": [3, 4], "max": 6, "grow_when": 0.9,
                                          "moves": [{"round": 3, "from": [2, 3], "to": [3, 4], "probe_accuracy": 0.95}]}


def test_a_curriculum_past_what_the_context_or_budget_holds_is_one_line_naming_what_fits(toy):
    _, tok = toy
    task = get_task("arithmetic", **TINY_TASK)
    total = {n: longest(task, tok, n)[0] for n in range(1, 9)}
    assert all(total[n] < total[n + 1] for n in range(1, 8))  # longer chains take more tokens
    cfg = RLConfig(probe_every=1, max_completion_length=1000, curriculum=CurriculumConfig(start=[2, 3], max=8))
    check_reach(task, tok, total[8], cfg)  # fits exactly
    check_reach(task, tok, None, cfg)  # a model whose config names no context
    with pytest.raises(CurriculumError, match=rf"^rl.curriculum.max is 8, but the longest of 20 8-step arithmetic chains "
                                              rf"takes {total[8]} tokens \(prompt \+ answer\), more than the model's "
                                              rf"context of {total[6]}: it holds up to 6 steps$"):
        check_reach(task, tok, total[6], cfg)
    answer = longest(task, tok, 5)[1]
    with pytest.raises(CurriculumError, match=rf"more than rl.max_completion_length {answer}: it holds up to 5 steps$"):
        check_reach(task, tok, None, dataclasses.replace(cfg, max_completion_length=answer))
    with pytest.raises(CurriculumError, match=r"it holds none of rl.curriculum.start \[2, 3\]$"):
        check_reach(task, tok, total[1], cfg)
    with pytest.raises(CurriculumError, match="makes no problems of 2 steps"):
        check_reach(get_task("arithmetic_step"), tok, None, cfg)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="num_generations must be >= 2"):
        load_recipe(None, ["rl.num_generations=1"])
    with pytest.raises(ConfigError, match="rl.reward"):
        load_recipe(None, ["rl.reward=pairwise"])
    with pytest.raises(ConfigError, match="rl.processes must be >= 1"):
        load_recipe(None, ["rl.processes=0"])
    assert load_recipe(None, []).rl is None and load_recipe(None, ["rl.rounds=3"]).rl.rounds == 3


def test_expert_iteration_keeps_valid_chains_and_the_valid_prefix_of_failed_ones(toy):
    _, tok = toy
    task = get_task("arithmetic", **TINY_TASK)
    ex = Example(question="1+2+4", answer="7", steps=("1+2=3", "3+4=7"), n_steps=2)
    group = credit.Group(ex, 0, [])
    for text in ("1+2=3\n3+4=7\n#### 7", "1+2=3\n3+4=8\n#### 8", "1+2=4\n#### 4"):
        ids = tok(text + end_of_turn(tok), add_special_tokens=False)["input_ids"]
        group.rollouts.append(credit.score(task, ex, text, False, 0.0, [0], ids))
    credit.assign_credit(group, RLConfig(algorithm="expert_iteration", keep_valid_prefix=True), tok)
    full, prefix, none = group.rollouts
    assert all(full.kept) and none.kept is None
    kept_text = tok.decode([t for t, k in zip(prefix.completion, prefix.kept) if k])
    assert kept_text == "1+2=3\n"


class _Stops:
    """A toy task a random model scores on now and then: every answer is right, so the reward is
    1 for a completion that ends (emits its end-of-turn token) within the budget, 0 when truncated."""
    name, imported = "stops", False

    def generate(self, rng, n_steps):
        return Example(f"{rng.randint(0, 9)}+1", "1", ("x",) * n_steps, n_steps, self.name)

    def check(self, example, steps, answer):
        return Check(answer_correct=True, step_ok=[True] * len(steps), chain_valid=True)


@pytest.mark.slow
def test_a_short_rl_run_on_a_toy_task_raises_the_mean_reward(tmp_path):
    from accelerate import Accelerator
    model, tok = tiny_model_and_tokenizer()  # every weight trainable: a random LoRA moves too slowly for a short test
    cfg = RLConfig(reward="outcome", rounds=12, prompts_per_round=8, num_generations=8, max_completion_length=32,
                   lr=1e-2, save_every=0, log_completions=1, flat_rounds=0)
    accelerator = Accelerator(cpu=True)
    model, opt, reference = rl.prepare(accelerator, model, cfg)
    rl.fit(model, tok, ProblemPool(_Stops(), cfg), reference, cfg, str(tmp_path), accelerator, opt)
    curve = [json.loads(line)["reward_mean"] for line in open(tmp_path / "metrics.jsonl")]
    assert len(curve) == 12 and sum(curve[-3:]) / 3 > sum(curve[:3]) / 3 + 0.2, curve
    assert (tmp_path / "completions.jsonl").read_text().count("\n") == 12


def test_an_adapter_trained_on_another_base_is_one_line_and_a_copied_or_moved_run_is_not(tmp_path):
    for seed, name in ((0, "base"), (1, "other")):
        model, tok = tiny_model_and_tokenizer(seed)
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    attach_lora(model, TrainConfig(lora_r=4)).save_pretrained(adapter)  # trained on "other"
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "other")}))
    with pytest.raises(ModelError, match="trained on .*other, not on .*base"):
        load_adapter(str(base), str(adapter), trainable=True)
    shutil.copytree(tmp_path / "other", tmp_path / "copy")
    check_adapter(str(tmp_path / "copy"), str(adapter))  # a copied run: the same files are the same base
    (tmp_path / "other").rename(tmp_path / "moved")
    model, _ = load_adapter(str(tmp_path / "moved"), str(adapter), trainable=True)  # a moved run: shapes and vocabulary decide
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    with pytest.raises(ModelError, match="adapter path not found"):
        load_adapter(str(base), str(tmp_path / "nothing"))


def test_expert_iteration_update_raises_the_likelihood_of_the_kept_tokens():
    model, tok = toy_policy(tiny_model_and_tokenizer())
    cfg = RLConfig(algorithm="expert_iteration", num_iterations=3, mini_batch_size=2, micro_batch_size=1, lr=1e-2)
    prompt = encode_prompt(tok, prompt_messages("1+2"))
    ids = tok("1+2=3\n#### 3" + end_of_turn(tok), add_special_tokens=False)["input_ids"]
    batch = [credit.Rollout(prompt, ids, "", False, [1], True, True, kept=[True] * len(ids))] * 2

    def nll():
        fwd = update.collate(batch[:1], 0)
        with torch.no_grad():
            return -(update.token_logprobs(model, fwd)[0] * fwd.place([[1.0] * len(ids)])).sum().item()
    before = nll()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    stats = update.sft_update(model, opt, batch, cfg, _Accelerator(), seed=0, pad_id=pad_token_id(tok))
    assert stats["loss"] > 0 and nll() < before - 0.5


def test_expert_iteration_forwards_only_up_to_the_last_kept_token_with_the_same_update(monkeypatch):
    """Tokens after a sample's valid prefix carry no loss and, under causal attention, change no
    kept token's logit: the update cuts them (kept_part) and ends where the update on the whole
    rows ends; two samples that differ only after their prefix run as one row."""
    model, tok = toy_policy(tiny_model_and_tokenizer())
    prompt = encode_prompt(tok, prompt_messages("1+2*3"))
    prefix = tok("2*3=6 | 1+6\n", add_special_tokens=False)["input_ids"]
    tails = [tok(t + end_of_turn(tok), add_special_tokens=False)["input_ids"] for t in ("1+6=8\n#### 8", "1+6=9\n#### 9")]
    batch = [Rollout(prompt, prefix + tail, "", False, [1, 0], False, False,
                     kept=[True] * len(prefix) + [False] * len(tail)) for tail in tails]
    cut = [update.kept_part(s) for s in batch]
    assert all(c.completion == prefix and all(c.kept) for c in cut) and len(update.unique(cut)[0]) == 1

    cfg = RLConfig(algorithm="expert_iteration", num_iterations=1, mini_batch_size=8, grad_clip=0.0)
    whole = copy.deepcopy(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for m in (model, whole):
        m.train()
    sgd = lambda m: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    opt = sgd(model)
    forwarded, logprobs = [], update.token_logprobs
    monkeypatch.setattr(update, "token_logprobs", lambda m, fwd, *a, **k: forwarded.append(fwd.ids.shape) or logprobs(m, fwd, *a, **k))
    update.sft_update(model, opt, batch, cfg, _Accelerator(), seed=0, pad_id=pad_token_id(tok))
    assert forwarded == [(1, len(prompt) + len(prefix))]  # one row, cut after the prefix
    fwd = update.collate(batch, 0)  # the whole rows, uncut
    keep, weight = fwd.place([[float(k) for k in s.kept] for s in batch]), fwd.place([[1 / (2 * len(prefix))] * len(s.kept) for s in batch])
    opt = sgd(whole)
    (-(update.token_logprobs(whole, fwd)[0] * keep * weight).sum()).backward()
    opt.step()
    for (name, p), q in zip(model.named_parameters(), whole.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
            assert not torch.equal(p, start[name]) or "lora_A" in name  # trained (B starts at 0: A's grad is 0)


def test_a_linear_schedule_lowers_the_learning_rate_round_by_round():
    cfg = RLConfig(lr=1e-3, rounds=4, lr_scheduler_type="linear")
    assert [rl.round_lr(cfg, r) for r in range(4)] == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert rl.round_lr(RLConfig(lr=1e-3, rounds=4), 3) == 1e-3
    with pytest.raises(ConfigError, match="rl.lr_scheduler_type must be 'constant' or 'linear', got 'cosine'"):
        RLConfig(lr_scheduler_type="cosine")


def test_sft_replay_draws_gold_training_examples_per_round_the_same_again_on_resume(toy):
    _, tok = toy
    task, rng = get_task("arithmetic", **TINY_TASK), random.Random(0)
    rows = [task.generate(rng, rng.randint(1, 3)).to_row() for _ in range(50)]
    cfg = RLConfig(algorithm="expert_iteration", replay_sft=8, seed=3)
    first = rl.sft_replay(rows, tok, cfg, rnd=0)
    gold = {tuple(sum(encode_example(tok, r["question"], render_target(Example.from_row(r), "cot")), [])) for r in rows}
    assert len(first) == 8 and all(s.valid and s.kept == [True] * len(s.completion) for s in first)
    assert {tuple(s.prompt + s.completion) for s in first} <= gold and len({tuple(s.prompt) for s in first}) == 8
    assert [s.completion for s in rl.sft_replay(rows, tok, cfg, rnd=0)] == [s.completion for s in first]
    assert [s.completion for s in rl.sft_replay(rows, tok, cfg, rnd=1)] != [s.completion for s in first]
    with pytest.raises(ConfigError, match="replay_sft .* needs algorithm expert_iteration"):
        RLConfig(replay_sft=8)


@pytest.mark.slow
def test_a_resumed_run_ends_with_the_same_weights_bit_for_bit(tmp_path):
    """4 rounds straight vs 2 rounds, a checkpoint, a fresh process state, and the last 2 rounds."""
    from accelerate import Accelerator
    from reasonlm.checkpoint import try_resume
    cfg = RLConfig(reward="outcome", rounds=4, prompts_per_round=4, num_generations=4, max_completion_length=24,
                   lr=1e-2, save_every=2, flat_rounds=0, num_iterations=2, retries=1)

    def run(out, stop_after=None):
        out.mkdir(exist_ok=True)
        model, tok = tiny_model_and_tokenizer()
        accelerator = Accelerator(cpu=True)
        model, opt, reference = rl.prepare(accelerator, model, cfg)
        start, state = try_resume(accelerator, model, str(out), None)
        pool = ProblemPool(_Stops(), cfg, state.get("pool"))
        rl.fit(model, tok, pool, reference, cfg if stop_after is None else
               dataclasses.replace(cfg, rounds=stop_after, save_every=0), str(out), accelerator, opt, start,
               state.get("history"))
        if stop_after:  # what a SIGKILL right after the checkpoint leaves behind
            from reasonlm.checkpoint import save_checkpoint
            save_checkpoint(accelerator, str(out), stop_after, 2, None, {"pool": pool.state(), "history": []})
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=2)
    resumed = run(tmp_path / "b")
    assert any(not torch.equal(straight[n], p) for n, p in tiny_model_and_tokenizer()[0].named_parameters())
    assert all(torch.equal(straight[n], resumed[n]) for n in straight)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_identical_rollouts_run_once_with_their_count_as_weight(loss_type):
    """The update trains each distinct rollout once: its weight with count c equals the summed
    weights of its c copies, for every loss type, so the loss is the one of the batch as drawn."""
    lengths, counts = [3, 5, 2], [2, 1, 3]
    drawn = update.token_weights([k for k, c in zip(lengths, counts) for _ in range(c)], loss_type, 10)
    merged = update.token_weights(lengths, loss_type, 10, counts)
    assert merged == pytest.approx([drawn[0] * 2, drawn[2], drawn[3] * 3])
    a = Rollout([1, 2], [3, 4], "x", False, [1], True, True, advantages=[0.5, 0.5])
    b = Rollout([1, 2], [3, 4], "x", False, [1], True, True, advantages=[-0.5, -0.5])  # same tokens, other credit
    distinct, n = update.unique([a, b, a, a])
    assert distinct == [a, b] and n == [3, 1]


def _varied_rollouts(tok) -> list[Rollout]:
    """Rollouts of one prompt with completions of different lengths, advantages and kept tokens."""
    prompt = encode_prompt(tok, prompt_messages("1+2"))
    batch = []
    for k, text in enumerate(["1+2=3\n#### 3", "1+2=4\n#### 4", "#### 3", "1+2=3\n3+0=3\n#### 3", "1+2=5\n#### 5",
                              "1+2=3\n#### 3", "1+2=3\n3-1=2\n#### 2"]):
        ids = tok(text + end_of_turn(tok), add_special_tokens=False)["input_ids"]
        batch.append(credit.Rollout(prompt, ids, text, False, [], True, True,
                                    advantages=[(-1) ** k * (0.25 + 0.1 * k)] * len(ids),
                                    kept=[i % 3 != 0 for i in range(len(ids))]))
    return batch


def test_a_packed_update_equals_the_padded_one():
    """rl.packed_attention lays a micro-batch's rollouts back to back in one row: every completion
    token gets the log-prob it gets in a padded row, so GRPO (ratio, clip, KL, entropy) and expert
    iteration end with the same weights and statistics, up to float rounding."""
    ends = []
    for packed in (False, True):
        torch.manual_seed(0)
        model, tok = toy_policy(tiny_model_and_tokenizer())
        if packed:
            use_packed_attention(model)
        batch = _varied_rollouts(tok)
        reference = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        cfg = RLConfig(num_iterations=2, mini_batch_size=5, micro_batch_size=3, lr=1e-2, beta=0.1, packed_attention=packed)
        fwd = update.collate(batch[:3], 0, packed)
        assert fwd.ids.shape[0] == (1 if packed else 3)
        assert fwd.ids.numel() == (sum(len(s.prompt) + len(s.completion) for s in batch[:3]) if packed
                                   else 3 * max(len(s.prompt) + len(s.completion) for s in batch[:3]))
        with torch.no_grad():
            logp = update.token_logprobs(model, fwd)[0]
        first = [fwd.take(logp, i, len(s.completion)) for i, s in enumerate(batch[:3])]
        stats = [update.grpo_update(model, opt, batch, reference, cfg, _Accelerator(), seed=3, pad_id=pad_token_id(tok)),
                 update.sft_update(model, opt, batch, dataclasses.replace(cfg, algorithm="expert_iteration"),
                               _Accelerator(), seed=4, pad_id=pad_token_id(tok))]
        ends.append((first, stats, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}))
    (padded_logp, padded_stats, padded), (packed_logp, packed_stats, packed) = ends
    for a, b in zip(padded_logp, packed_logp):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    for n, w in padded.items():
        torch.testing.assert_close(packed[n], w, rtol=0, atol=2e-5)
    for a, b in zip(padded_stats, packed_stats):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6) for k in a if a[k] is not None)


def test_position_jitter_shifts_each_completion_alone_and_the_same_way_in_every_forward_of_a_round():
    """rl.position_jitter: a completion's positions start 0..J after its prompt's last one, the prompt's
    are untouched; the shift depends on the round's seed and the rollout's tokens only, so the old,
    reference and updated log-probs of a round (and a resumed round) see the same positions."""
    model, tok = toy_policy(tiny_model_and_tokenizer())
    use_packed_attention(model)
    batch = _varied_rollouts(tok)
    plain = update.collate(batch, 0, packed=True)
    shifted = update.collate(batch, 0, packed=True, jitter=16, seed=7)
    assert torch.equal(update.collate(batch, 0, packed=True, jitter=16, seed=7).position_ids, shifted.position_ids)
    assert torch.equal(shifted.ids, plain.ids) and shifted.spans == plain.spans
    gaps, at = [], 0
    for s in batch:
        n, m = len(s.prompt), len(s.completion)
        got = shifted.position_ids[0, at:at + n + m]
        assert torch.equal(got[:n], torch.arange(n))
        gap = int(got[n]) - n
        assert 0 <= gap <= 16 and torch.equal(got[n:], torch.arange(m) + n + gap)
        gaps.append(gap)
        at += n + m
    assert len(set(gaps)) > 1  # seven completions, 17 possible gaps: not one shift for all
    other = update.collate(batch, 0, packed=True, jitter=16, seed=8).position_ids
    assert not torch.equal(other, shifted.position_ids)  # the next round draws other gaps
    with torch.no_grad():  # the positions reach the model: the completion's log-probs move
        a, b = (update.token_logprobs(model, f)[0] for f in (plain, shifted))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="packed rows"):
        update.collate(batch, 0, packed=False, jitter=16)


@pytest.mark.parametrize("overrides,match", [
    ({"position_jitter": 8}, r"^rl.position_jitter is 8, which needs rl.packed_attention: true"),
    ({"position_jitter": -1, "packed_attention": True}, r"^rl.position_jitter must be >= 0, got -1$"),
])
def test_bad_rl_position_jitter_is_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match):
        RLConfig(**overrides)


def test_a_packed_update_batch_built_on_the_cpu_runs_on_the_models_device():
    """Forward.to moves the ids, the positions and the packed layout to the model's device. The meta
    device stands in for a GPU: an op that mixes it with a CPU tensor fails. (Right-padded rows
    cannot run on meta: transformers reads values to build their causal mask.)"""
    model, tok = toy_policy(tiny_model_and_tokenizer())
    use_packed_attention(model)
    model.to("meta")
    fwd = update.collate(_varied_rollouts(tok)[:3], 0, packed=True)
    with pytest.raises((RuntimeError, NotImplementedError)):
        update.token_logprobs(model, fwd)  # what a GPU run without the move would do
    moved = fwd.to("meta")  # index_select on meta accepts a CPU index, so check the layout's place too
    assert {t.device.type for t in (moved.ids, moved.position_ids, moved.packed_rows.source, moved.packed_rows.slot)} == {"meta"}
    logp, entropy = update.token_logprobs(model, moved, with_entropy=True)
    assert logp.device.type == entropy.device.type == "meta"
    assert logp.shape == entropy.shape == (fwd.ids.shape[0], fwd.ids.shape[1] - 1)


def _updates_in_a_gloo_group(rank: int, world: int, port: int, out: str) -> None:
    """One process of `world`: both updates on a fixed batch; rank 0 saves the trained weights."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    accelerator = _Accelerator()
    accelerator.num_processes, accelerator.process_index, accelerator.device = world, rank, "cpu"
    model, tok = toy_policy(tiny_model_and_tokenizer())
    batch = _varied_rollouts(tok)
    params = [p for p in model.parameters() if p.requires_grad]
    reference = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW(params, lr=1e-2)
    cfg = RLConfig(num_iterations=2, mini_batch_size=5, micro_batch_size=1, lr=1e-2, beta=0.1)
    stats = [update.grpo_update(model, opt, batch, reference, cfg, accelerator, seed=3, pad_id=pad_token_id(tok)),
             update.sft_update(model, opt, batch, dataclasses.replace(cfg, algorithm="expert_iteration"), accelerator, seed=4,
                               pad_id=pad_token_id(tok))]
    if rank == 0:
        torch.save({"weights": {n: p.detach() for n, p in model.named_parameters() if p.requires_grad},
                    "stats": stats}, out)
    if world > 1:
        dist.destroy_process_group()


@pytest.mark.slow
def test_updates_on_two_processes_equal_one_process(tmp_path):
    """Each process runs every other micro-batch (a mini-batch of 5 rollouts in micro-batches of 1:
    3 on one process, 2 on the other) and the gradients are summed before the step: GRPO and expert
    iteration end with the weights of one process, up to the order of float sums."""
    import torch.multiprocessing as mp
    from reasonlm.processes import free_port
    _updates_in_a_gloo_group(0, 1, 0, str(tmp_path / "one.pt"))
    mp.spawn(_updates_in_a_gloo_group, args=(2, free_port(), str(tmp_path / "two.pt")), nprocs=2)
    one, two = (torch.load(tmp_path / f, weights_only=True) for f in ("one.pt", "two.pt"))
    start = dict(toy_policy(tiny_model_and_tokenizer())[0].named_parameters())
    for n, w in one["weights"].items():
        assert not torch.equal(w, start[n])  # trained
        torch.testing.assert_close(two["weights"][n], w, rtol=0, atol=2e-5)  # steps of ~1e-2: Adam on float noise
    for a, b in zip(one["stats"], two["stats"]):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6) for k in a if a[k] is not None)


def test_sampling_batches_are_dealt_back_and_forth_over_the_processes():
    """Batches come sorted by prompt length (longer chains last): 0,1,1,0,0,1 for two processes,
    so neither always gets the longer of each pair; every batch goes to exactly one process."""
    assert [dealt_to(k, 2) for k in range(6)] == [0, 1, 1, 0, 0, 1]
    assert [dealt_to(k, 3) for k in range(7)] == [0, 1, 2, 2, 1, 0, 0]
    assert [dealt_to(k, 1) for k in range(3)] == [0, 0, 0]


def test_cores_are_split_by_one_rule_for_every_launcher(monkeypatch):
    """rl.processes, the CLI's relaunch and each process's torch threads share cores_each: the
    machine's cores (or the threads asked for) divided among the processes, never below 1."""
    from reasonlm.model import set_threads
    from reasonlm.processes import cores_each
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert [cores_each(1), cores_each(2), cores_each(3), cores_each(16)] == [8, 4, 2, 1]
    assert [cores_each(2, threads=2), cores_each(4, threads=2)] == [1, 1]
    before = torch.get_num_threads()
    try:
        assert set_threads(0, world=4) == 2 and torch.get_num_threads() == 2
        assert set_threads(3, world=4) == 3  # asked for per process: taken as it is
    finally:
        torch.set_num_threads(before)


def test_resumed_logs_keep_the_rounds_up_to_the_checkpoint_and_drop_a_torn_last_line(tmp_path):
    from reasonlm.checkpoint import keep_metrics_until
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"round": r}) + "\n" for r in (1, 2, 3)) + '{"round": 4, "rew')
    keep_metrics_until(str(log), 2, key="round")
    assert [json.loads(line)["round"] for line in log.read_text().splitlines()] == [1, 2]


def test_resume_loads_the_checkpoints_weights_into_the_unwrapped_model(tmp_path):
    """What Accelerate cannot do with a DDP wrapper registered on GPUs: the saved adapter's keys (no
    'module.' prefix, or DDP's) load into the unwrapped model; a foreign key is an error."""
    from safetensors.torch import save_file
    from reasonlm.checkpoint import load_weights_unwrapped, trainable_state_dict
    trained, _ = toy_policy(tiny_model_and_tokenizer(seed=1))
    saved = {k: (v + 1).contiguous() for k, v in trainable_state_dict(trained).items()}  # unlike any init
    for prefix in ("", "module."):
        save_file({prefix + k: v for k, v in saved.items()}, str(tmp_path / "model.safetensors"))
        fresh, _ = toy_policy(tiny_model_and_tokenizer(seed=0))
        load_weights_unwrapped(fresh, str(tmp_path))
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())
    save_file({"not.a.weight": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="weights the model does not have"):
        load_weights_unwrapped(fresh, str(tmp_path))


@pytest.mark.parametrize("mini_batch_size,what", [(2, "loss is nan"), (64, "the weights are no longer finite")])
def test_a_diverged_round_stops_rl_before_anything_is_saved(tmp_path, monkeypatch, mini_batch_size, what):
    """A step at an infinite rate (what rl.lr=.inf did before RLConfig refused it; a diverging run
    ends the same way): the next mini-batch's loss is NaN, or, with one step a round, the weights
    are NaN while the round's loss was not. Either stops the run at round 1 in one line (training's
    check, checkpoint.stop_if_diverged), before a checkpoint or an adapter is written."""
    from accelerate import Accelerator
    from reasonlm.checkpoint import DivergedError
    monkeypatch.setattr(rl, "round_lr", lambda cfg, rnd: float("inf"))
    model, tok = tiny_model_and_tokenizer()
    cfg = RLConfig(reward="outcome", rounds=3, prompts_per_round=4, num_generations=4, max_completion_length=8,
                   mini_batch_size=mini_batch_size, micro_batch_size=2, save_every=1, flat_rounds=0)
    accelerator = Accelerator(cpu=True)
    model, opt, reference = rl.prepare(accelerator, model, cfg)
    with pytest.raises(DivergedError, match=rf"^{what} at round 1; stopped\. Last good checkpoint: none\. Lower rl\.lr"):
        rl.fit(model, tok, ProblemPool(_Stops(), cfg), reference, cfg, str(tmp_path), accelerator, opt)
    assert not list(tmp_path.glob("checkpoint-*"))


@pytest.mark.parametrize("override,message", [
    ("rl.lr=.inf", "rl.lr must be finite and > 0, got inf"),
    ("rl.lr=-1", "rl.lr must be > 0, got -1.0"),
    ("rl.seed=-1", "rl.seed must be >= 0, got -1"),
    ("rl.keep_last=0", "rl.keep_last must be >= 1, got 0"),
    ("rl.save_every=-1", "rl.save_every must be >= 0, got -1"),
    ("rl.n_steps=[true, 2]", "rl.n_steps must be [lo, hi] with 1 <= lo <= hi, got [True, 2]"),
    ("rl.task={name: arithmetic, args: [1]}", "rl.task must be {} (the first generated family of data.tasks) or "
                                              "{name: FAMILY, args: {KNOB: VALUE}}, got {'name': 'arithmetic', 'args': [1]}"),
])
def test_bad_rl_settings_are_one_line_through_the_cli_and_nothing_is_written(tmp_path, capsys, override, message):
    from reasonlm import cli
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        cli.main(["rl", "recipes/tiny-cpu.yaml", f"out_dir={out}", override])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert not out.exists()
