"""Rollouts: a round's problems sampled with the engine (sharded over the processes) and scored by
the task's checker, with the credit of every completion."""
from __future__ import annotations

from reasonlm.answer import encode_prompt, end_of_turn, prompt_messages
from reasonlm.config import RLConfig
from reasonlm.credit import Group, assign_credit, has_signal, score
from reasonlm.engine import SamplingParams
from reasonlm.rl.pool import ProblemPool
from reasonlm.rl.update import gathered


def collect(engine, tokenizer, pool: ProblemPool, cfg: RLConfig, rnd: int,
            accelerator) -> tuple[list[Group], list[Group], float]:
    """(groups to train on, every group sampled this round, the fraction of the first draw's
    groups without signal). With dynamic_sampling, groups without signal are replaced by groups
    of more problems (at most max_resamples extra passes) and only groups with signal are kept."""
    wanted, train, seen, zero_first = cfg.prompts_per_round, [], [], 0.0
    for attempt in range(1 + (cfg.max_resamples if cfg.dynamic_sampling else 0)):
        problems = pool.draw(wanted - len(train))
        fresh = rollout(engine, tokenizer, pool.task, problems, cfg, (cfg.seed * 1009 + rnd) * 1009 + attempt,
                        accelerator)
        for g in fresh:
            assign_credit(g, cfg, tokenizer)
            pool.give_back(g.example, g.attempts, sum(s.valid for s in g.rollouts), len(g.rollouts))
        signal = [g for g in fresh if has_signal(g, cfg)]
        if attempt == 0:
            zero_first = 1 - len(signal) / len(fresh)
        seen += fresh
        train += signal if cfg.dynamic_sampling else fresh
        if len(train) >= wanted or not cfg.dynamic_sampling:
            break
    return train, seen, zero_first


def rollout(engine, tokenizer, task, problems, cfg: RLConfig, seed: int, accelerator) -> list[Group]:
    """num_generations completions of every problem, scored by the task's checker (by every
    process, each holding every completion)."""
    G, eot = cfg.num_generations, tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    prompts = [encode_prompt(tokenizer, prompt_messages(ex.question)) for ex, _ in problems]
    params = SamplingParams(max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
                            seeds=[seed * 100_003 + k for k in range(len(problems) * G)],
                            batch_size=cfg.sample_batch_size)
    outs = sample(engine, [p for p in prompts for _ in range(G)], params, accelerator)
    groups = []
    for k, (example, attempts) in enumerate(problems):
        rollouts = []
        for ids in outs[k * G:(k + 1) * G]:
            truncated = len(ids) >= cfg.max_completion_length  # the engine drops the stop token that ended a row
            text = tokenizer.decode(ids)
            rollouts.append(score(task, example, text, truncated, cfg.truncation_penalty,
                                  prompts[k], ids if truncated else ids + [eot]))
        groups.append(Group(example, attempts, rollouts))
    return groups


def sample(engine, prompts: list[list[int]], params: SamplingParams, accelerator) -> list[list[int]]:
    """engine.generate sharded over the processes (each decodes the batches dealt to it), the
    completions gathered back in prompt order on every process."""
    outs = engine.generate(prompts, params, rank=accelerator.process_index, world=accelerator.num_processes)
    done = dict(gathered(accelerator, [(i, ids) for i, ids in enumerate(outs) if ids is not None]))
    return [done[i] for i in range(len(prompts))]
