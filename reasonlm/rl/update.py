"""The RL updates on a round's rollouts: GRPO's clipped policy gradient (`grpo_update`) and expert
iteration's SFT loss (`sft_update`); the loss and advantages are written out in reasonlm/rl/__init__.py.
Also the forward layout (`Forward`, `collate`) and what several processes share (`share`, `step`,
`gathered`, `across`)."""
from __future__ import annotations

import dataclasses
import itertools
import random

import torch
import torch.nn.functional as F

from reasonlm.config import RLConfig
from reasonlm.credit import Rollout
from reasonlm.packing import PackedRows, packed_forward


# At a low temperature many of a group's completions are the same tokens (an easy problem's G
# samples are often one chain). Identical rollouts (same prompt, completion and credit) have
# identical gradients, so each runs once with its count as a weight: the same loss, fewer tokens.
def unique(batch: list[Rollout]) -> tuple[list[Rollout], list[int]]:
    """(distinct rollouts in first-seen order, how many times each occurs)."""
    index: dict = {}
    for s in batch:
        key = (tuple(s.prompt), tuple(s.completion), tuple(s.advantages or ()), tuple(s.kept or ()))
        index.setdefault(key, [s, 0])[1] += 1
    return [s for s, _ in index.values()], [n for _, n in index.values()]


def token_weights(lengths: list[int], loss_type: str, max_completion_length: int,
                  counts: list[int] | None = None) -> list[float]:
    """What one token's loss counts in the batch's loss, per completion (see reasonlm/rl/__init__.py's docstring); with
    `counts`, completion i stands for counts[i] identical ones."""
    counts = counts or [1] * len(lengths)
    n, total = sum(counts), sum(k * c for k, c in zip(lengths, counts))
    if loss_type == "grpo":
        return [c / (n * max(k, 1)) for k, c in zip(lengths, counts)]
    if loss_type == "dr_grpo":
        return [c / (n * max_completion_length) for c in counts]
    return [c / max(total, 1) for c in counts]  # dapo


@dataclasses.dataclass
class Forward:
    """Rollouts laid out for one forward pass, and where each one's completion is predicted.

    Right-padded (the default): a row per rollout; under causal attention no real token sees a
    pad, so no mask is passed (SDPA's causal kernel instead of a masked one). Packed
    (rl.packed_attention): every rollout back to back in one row without padding, position ids
    restarting at each, kept apart by packed attention (reasonlm/packing.py), as in training.
    Per-token tensors line up with logits[:, :-1]: position p predicts token p + 1, and rollout
    i's completion tokens are predicted at spans[i] = (row, p0), p0 + 1, ... (p0: its prompt's
    last token). A packed row's last token of one rollout "predicts" the next one's first token:
    that position lies in no span, so it carries no loss."""
    ids: torch.Tensor
    spans: list[tuple[int, int]]
    position_ids: torch.Tensor | None = None
    packed_rows: PackedRows | None = None

    def place(self, values: list[list[float]]) -> torch.Tensor:
        """(rows, width - 1): values[i][j] where rollout i's completion token j is predicted, else 0."""
        out = torch.zeros((self.ids.shape[0], self.ids.shape[1] - 1))
        for (row, p), v in zip(self.spans, values):
            out[row, p:p + len(v)] = torch.as_tensor(v, dtype=torch.float32)
        return out

    def take(self, per_token: torch.Tensor, i: int, n: int) -> torch.Tensor:
        """Rollout i's first n completion positions of a (rows, width - 1) tensor."""
        row, p = self.spans[i]
        return per_token[row, p:p + n]

    def to(self, device) -> Forward:
        if self.packed_rows is None:
            return dataclasses.replace(self, ids=self.ids.to(device))
        return dataclasses.replace(self, ids=self.ids.to(device), position_ids=self.position_ids.to(device),
                                   packed_rows=self.packed_rows.to(device))


def jitter_shift(s: Rollout, jitter: int, seed: int) -> int:
    """The 0..jitter position gap rl.position_jitter puts between `s`'s prompt and completion: a
    function of the round's seed and the rollout's tokens alone, so every forward of a round (old,
    reference and updated log-probs), every process and a resumed run see the same positions."""
    return random.Random(f"{seed}|{s.prompt}|{s.completion}").randint(0, jitter) if jitter else 0


def collate(rollouts: list[Rollout], pad_id: int, packed: bool = False, jitter: int = 0, seed: int = 0) -> Forward:
    """The rollouts' prompt + completion tokens as one Forward: right-padded rows, or packed (with
    `jitter`, each completion's positions start jitter_shift() after its prompt's end, as
    train.position_jitter does in SFT; packed only, since padded rows have no position ids)."""
    seqs = [s.prompt + s.completion for s in rollouts]
    if packed:
        starts = [0, *itertools.accumulate(len(q) for q in seqs)][:-1]
        positions = [torch.cat([torch.arange(len(s.prompt)), torch.arange(len(s.completion))
                                + len(s.prompt) + jitter_shift(s, jitter, seed)]) for s in rollouts]
        return Forward(torch.tensor([t for q in seqs for t in q])[None],
                       [(0, at + len(s.prompt) - 1) for at, s in zip(starts, rollouts)],
                       torch.cat(positions)[None], PackedRows.from_lengths([len(q) for q in seqs]))
    if jitter:
        raise ValueError("position jitter needs packed rows (rl.packed_attention)")
    ids = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    for r, q in enumerate(seqs):
        ids[r, :len(q)] = torch.tensor(q)
    return Forward(ids, [(r, len(s.prompt) - 1) for r, s in enumerate(rollouts)])


def token_logprobs(model, batch: Forward, with_entropy: bool = False):
    """log p(next token) at every position of `batch` (and the entropy of its distribution)."""
    if batch.packed_rows is None:
        out = model(input_ids=batch.ids, use_cache=False)
    else:
        out = packed_forward(model, batch.ids, batch.position_ids, batch.packed_rows)
    logp_all = F.log_softmax(out.logits[:, :-1].float(), -1)
    logp = logp_all.gather(-1, batch.ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    return logp, entropy


def policy_loss(logp, old_logp, ref_logp, advantages, weight, cfg: RLConfig):
    """The weighted sum of GRPO's per-token loss, and its clip statistics (see reasonlm/rl/__init__.py's docstring)."""
    ratio = torch.exp(logp - old_logp)
    clipped = ratio.clamp(1 - cfg.epsilon, 1 + (cfg.epsilon_high or cfg.epsilon))
    per_token = -torch.minimum(ratio * advantages, clipped * advantages)
    if cfg.beta:
        q = ref_logp - logp
        per_token = per_token + cfg.beta * (torch.exp(q) - q - 1)
    live = weight > 0
    clipped_tokens = (clipped * advantages < ratio * advantages) & live
    return (per_token * weight).sum(), {"clipped_tokens": clipped_tokens, "ratio_min": ratio[live].min().item(),
                                        "ratio_max": ratio[live].max().item()}


@torch.no_grad()
def reference_logprobs(model, reference: dict, batch: Forward):
    """Log-probs under the starting adapter: its weights are swapped in for one forward."""
    params = dict(model.named_parameters())
    current = {n: params[n].detach().clone() for n in reference}
    for n, w in reference.items():
        params[n].copy_(w)
    logp, _ = token_logprobs(model, batch)
    for n, w in current.items():
        params[n].copy_(w)
    return logp


def mini_batches(counts: list[int], size: int, rng: random.Random) -> list[list[int]]:
    """A shuffled pass over distinct rollouts (by index), cut where a mini-batch holds `size` drawn
    rollouts (a rollout drawn c times counts c)."""
    out, filled = [[]], 0
    for i in rng.sample(range(len(counts)), len(counts)):
        if filled >= size:
            out, filled = out + [[]], 0
        out[-1].append(i)
        filled += counts[i]
    return out


# With N processes every process holds the whole round (the same rollouts, the same shuffles);
# each runs every N-th rollout of a length-sorted mini-batch (an even share of its tokens), in
# micro-batches, weighted as a part of the whole mini-batch, and the gradients are summed over
# processes before the step: the mini-batch's gradient, up to the order of the float sums. The
# forward runs on the unwrapped model: DDP's hooks would expect every process to run the same
# number of backward passes.
def share(indices: list[int], accelerator, size: int) -> list[list[int]]:
    """This process's every-N-th of `indices`, cut into micro-batches of `size`."""
    mine = indices[accelerator.process_index::accelerator.num_processes]
    return [mine[j:j + size] for j in range(0, len(mine), size)]


def grpo_update(model, optimizer, batch: list[Rollout], reference: dict, cfg: RLConfig, accelerator,
                seed: int = 0, *, pad_id: int) -> dict:
    """num_iterations shuffled passes over the round's rollouts in mini-batches of mini_batch_size
    drawn rollouts, one optimizer step each. The old (and reference) log-probs of every rollout are
    computed first, by the same model in the same precision, so the first step's ratio is exactly 1.
    pad_id: the tokenizer's (answer.pad_token_id), as sampling and SFT pad with."""
    if not batch:
        return {"loss": 0.0, "kl": 0.0, "entropy": None, "clip_fraction": 0.0}
    net = accelerator.unwrap_model(model)
    net.train()
    device = next(net.parameters()).device
    tokens = sum(len(s.completion) for s in batch)
    distinct, counts = unique(batch)
    before = []  # (distinct rollout, log-probs of its completion tokens before any step, reference's)
    for idx in share(list(range(len(distinct))), accelerator, cfg.micro_batch_size):
        part = [distinct[i] for i in idx]
        fwd = collate(part, pad_id, cfg.packed_attention, cfg.position_jitter, seed).to(device)
        with torch.no_grad():
            logp = token_logprobs(net, fwd)[0]
        logp_ref = reference_logprobs(net, reference, fwd)
        for r, (i, s) in enumerate(zip(idx, part)):
            n = len(s.completion)  # not views: a view would pickle (gather) its whole micro-batch buffer
            before.append((i, fwd.take(logp, r, n).cpu().clone(), fwd.take(logp_ref, r, n).cpu().clone()))
    before = sorted(gathered(accelerator, before), key=lambda x: x[0])
    old, ref = [x[1] for x in before], [x[2] for x in before]
    rng = random.Random(seed)
    # summed over this process's micro-batches: [loss of the last pass, clipped tokens of the last
    # pass, kl, entropy] (kl and entropy: per-token means of the first pass), ratio min and max
    sums, ratio_min, ratio_max = [0.0] * 4, 1.0, 1.0
    for it in range(cfg.num_iterations):
        sums[0] = sums[1] = 0.0
        minis = mini_batches(counts, cfg.mini_batch_size, rng)
        for mini in minis:
            mini.sort(key=lambda i: len(distinct[i].prompt) + len(distinct[i].completion))  # micro-batches pad less
            weights = dict(zip(mini, token_weights([len(distinct[i].completion) for i in mini], cfg.loss_type,
                                                   cfg.max_completion_length, [counts[i] for i in mini])))
            for idx in share(mini, accelerator, cfg.micro_batch_size):
                part = [distinct[i] for i in idx]
                fwd = collate(part, pad_id, cfg.packed_attention, cfg.position_jitter, seed)
                adv, weight, old_m, ref_m, multiplicity = (fwd.place(v).to(device) for v in (
                    [s.advantages for s in part], [[weights[i]] * len(s.completion) for i, s in zip(idx, part)],
                    [old[i] for i in idx], [ref[i] for i in idx],
                    [[counts[i]] * len(s.completion) for i, s in zip(idx, part)]))
                logp, entropy = token_logprobs(net, fwd.to(device), with_entropy=it == 0)
                loss, clip = policy_loss(logp, old_m, ref_m, adv, weight, cfg)
                accelerator.backward(loss)
                sums[0] += loss.item()
                sums[1] += (clip["clipped_tokens"] * multiplicity).sum().item()
                ratio_min, ratio_max = min(ratio_min, clip["ratio_min"]), max(ratio_max, clip["ratio_max"])
                if it == 0:  # per-token means over the batch as drawn (duplicates counted)
                    live, q = weight > 0, ref_m - logp.detach()
                    sums[2] += ((torch.exp(q) - q - 1) * multiplicity * live).sum().item() / tokens
                    sums[3] += (entropy * multiplicity * live).sum().item() / tokens
            step(net, optimizer, cfg, accelerator)
    loss, hits, kl, entropy = across(accelerator, sums, "sum")
    stats = {"loss": loss / len(minis), "kl": kl, "entropy": entropy, "clip_fraction": hits / tokens,
             "ratio_min": across(accelerator, [ratio_min], "min")[0], "ratio_max": across(accelerator, [ratio_max], "max")[0]}
    return {k: round(v, 6) for k, v in stats.items()}


def sft_update(model, optimizer, batch: list[Rollout], cfg: RLConfig, accelerator, seed: int, *,
               pad_id: int) -> dict:
    """Expert iteration: num_iterations shuffled passes over the kept samples with the SFT loss
    (minus the mean log-likelihood of a mini-batch's kept tokens). A mini-batch holds
    mini_batch_size kept samples; identical ones run as one row weighted by their count."""
    net = accelerator.unwrap_model(model)
    net.train()
    device = next(net.parameters()).device
    rng, loss_sum, steps = random.Random(seed), 0.0, 0
    distinct, counts = unique([kept_part(s) for s in batch])
    for _ in range(cfg.num_iterations if batch else 0):
        for mini in mini_batches(counts, cfg.mini_batch_size, rng):
            mini.sort(key=lambda i: len(distinct[i].prompt) + len(distinct[i].completion))  # micro-batches pad less
            total = sum(counts[i] * sum(distinct[i].kept) for i in mini)
            for idx in share(mini, accelerator, cfg.micro_batch_size):
                part = [distinct[i] for i in idx]
                fwd = collate(part, pad_id, cfg.packed_attention, cfg.position_jitter, seed)
                keep, weight = (fwd.place(v).to(device) for v in (
                    [[float(k) for k in s.kept] for s in part],
                    [[counts[i] / total] * len(s.kept) for i, s in zip(idx, part)]))
                loss = -(token_logprobs(net, fwd.to(device))[0] * keep * weight).sum()
                accelerator.backward(loss)
                loss_sum += loss.item()
            step(net, optimizer, cfg, accelerator)
            steps += 1
    loss = across(accelerator, [loss_sum], "sum")[0] / max(1, steps)
    return {"loss": round(loss, 6), "kl": None, "entropy": None, "clip_fraction": None}


def kept_part(s: Rollout) -> Rollout:
    """`s` ending at its last kept token. Under causal attention no kept token's logit sees a later
    token, so the loss is the same, and a failed sample's valid prefix is often half its
    completion, so the update forwards far fewer (padded) tokens (docs/experiments.md).
    Samples that differ only after their kept prefix become one row, weighted by their count."""
    end = max(t for t, k in enumerate(s.kept) if k) + 1
    return dataclasses.replace(s, completion=s.completion[:end], kept=s.kept[:end])


def step(net, optimizer, cfg: RLConfig, accelerator) -> None:
    """Sum the gradients over processes (see above), clip, step."""
    params = [p for p in net.parameters() if p.requires_grad]
    if accelerator.num_processes > 1:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view_as(p).clone()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def gathered(accelerator, items: list) -> list:
    """Every process's items (picklable), in process order, on every process."""
    if accelerator.num_processes == 1:
        return items
    parts: list = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def across(accelerator, values: list[float], op: str) -> list[float]:
    """Per-process statistics combined over processes (sum, min or max)."""
    if accelerator.num_processes == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t, op={"sum": torch.distributed.ReduceOp.SUM, "min": torch.distributed.ReduceOp.MIN,
                                        "max": torch.distributed.ReduceOp.MAX}[op])
    return t.tolist()
