"""MiniLLM's rollout buffer: the scored samples of one round and the PPO passes over them, with its state_dict.

A round's samples stay fixed for `ppo_epochs` shuffled passes (reference §2a: rewards, w and old log-probs are
not recomputed); each pass drops the last incomplete global micro-batch (the reference's drop_last). The buffer
is global (gathered from every rank, in the order of the round's prompt stream) and every global micro-batch is
sliced by rank, so N ranks take the same steps as one process. Samples, pass order and counters are part of a
checkpoint: a resumed run continues mid-round on the same samples.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from takd.sampling import collate_sequences, pad_right
from takd.train.minillm.teacher_cache import owner_first_deal


@dataclass
class Sample:
    """One scored rollout; per-token lists have the response length L (valid tokens only)."""

    prompt_ids: list[int]
    response_ids: list[int]
    logq_old: list[float]  # log q_old(y_t): the student at rollout time
    weights: list[float]  # w_t = q_old(y_t) / p̃(y_t)
    rewards: list[float]  # r_t = log p(y_t) − log q_old(y_t), scaled and clipped
    position: int = 0  # place in its round's global prompt stream (the gathered buffer's order)
    # positions that enter the loss: false where a sampling filter left q_old or the teacher at −inf (None: all)
    valid: list[bool] | None = None
    kept_ids: list[list[int]] | None = None  # with top-k/top-p: the student's kept token ids at each position


def collate_rollouts(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """`collate_sequences` plus the per-token rollout tensors [B, T] (zero/one padded); `mask` keeps only the valid
    positions, and with a sampling filter `kept_ids` [B, T, K] holds each position's kept set (padded with repeats)."""
    batch = {
        **collate_sequences([s.prompt_ids for s in samples], [s.response_ids for s in samples], pad_id),
        "logq_old": pad_right([s.logq_old for s in samples], 0.0, torch.float32),
        "weights": pad_right([s.weights for s in samples], 1.0, torch.float32),
        "rewards": pad_right([s.rewards for s in samples], 0.0, torch.float32),
        "positions": torch.tensor([s.position for s in samples]),
        "lengths": torch.tensor([len(s.response_ids) for s in samples]),
    }
    if any(s.valid is not None for s in samples):
        valid = [s.valid if s.valid is not None else [True] * len(s.response_ids) for s in samples]
        batch["mask"] = batch["mask"] & pad_right(valid, False, torch.bool)
    if samples[0].kept_ids is not None:
        T = batch["response_ids"].shape[1]
        K = max(len(k) for s in samples for k in s.kept_ids)
        rows = [[k + [k[0]] * (K - len(k)) for k in s.kept_ids] + [[0] * K] * (T - len(s.kept_ids)) for s in samples]
        batch["kept_ids"] = torch.tensor(rows, dtype=torch.long)
    return batch


@dataclass
class RolloutBuffer:
    seed: int
    ppo_epochs: int
    samples: list[Sample] = field(default_factory=list)
    pass_order: list[int] = field(default_factory=list)  # buffer indices left in the current PPO pass
    passes_left: int = 0  # PPO passes still to make over the current samples
    round: int = 0  # rollout collections so far

    def next_micro_batch(self, per_rank: int, world: int, rank: int,
                         collect: Callable[[int], list[Sample]], owner_first: bool = False) -> list[Sample]:
        """This rank's `per_rank` samples of the next global micro-batch (per_rank × world samples). When the
        buffer is spent, `collect(round)` draws the next round's samples (every rank gets the same list).
        owner_first (the teacher cache): the same global micro-batch, dealt so each rank takes its own samples
        (buffer index mod world) first."""
        global_size = per_rank * world
        if len(self.pass_order) < global_size:
            if self.passes_left <= 0:
                self.samples = collect(self.round)
                self.round += 1
                self.passes_left = self.ppo_epochs
            rng = random.Random(f"{self.seed}-{self.round}-{self.passes_left}")
            order = list(range(len(self.samples)))
            rng.shuffle(order)
            self.pass_order = order[: len(order) - len(order) % global_size]  # drop_last
            self.passes_left -= 1
        idx, self.pass_order = self.pass_order[:global_size], self.pass_order[global_size:]
        mine = owner_first_deal(idx, per_rank, world)[rank] if owner_first else \
            idx[rank * per_rank: (rank + 1) * per_rank]
        return [self.samples[i] for i in mine]

    def state_dict(self) -> dict[str, Any]:
        return {"samples": [asdict(x) for x in self.samples], "pass_order": self.pass_order,
                "passes_left": self.passes_left, "round": self.round}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples = [Sample(**x) for x in state["samples"]]
        self.pass_order, self.passes_left, self.round = state["pass_order"], state["passes_left"], state["round"]
