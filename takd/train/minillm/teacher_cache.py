"""The teacher's response logits of a round, kept across its PPO passes (`minillm.teacher_cache`).

A round's samples are fixed for `ppo_epochs` passes, and so is the teacher: its logits at each sample's response
positions are the same in every pass. Without the cache the single-step term runs the teacher's full forward on
every micro-batch of every pass (`ppo_epochs` forwards per sample); with it, a sample's logits are kept from the
first forward on the rank that owns the sample and reused, so one process runs the teacher once per sample per
round. The values are the forward's own output in its own dtype (bf16 logits stay bf16): reuse is exact, up to
the batch-shape dependence of the forward's kernels (float32: < 1e-6, tested).

Several processes: sample i is owned by rank i mod world, and each global micro-batch is dealt owner-first
(`owner_first_deal`): a rank takes its own samples of the micro-batch, then the others' overflow. The global
micro-batch is unchanged (the trajectory is the single process's, as without the cache), but a sample dealt to a
non-owner is recomputed there and not kept, so hits are partial (about 78 % of passes after the first for 4
samples per rank on 4 ranks). The ranks agree on each micro-batch (one all-reduce) whether the teacher runs, so a
ZeRO-3-sharded teacher's collective forward is entered by all or none.

Memory per rank: ⌈num_rollouts / world⌉ × max_new_tokens × V × (2 B in bf16/fp16, 4 B in float32), on the device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def owner_first_deal(indices: list[int], per_rank: int, world: int) -> list[list[int]]:
    """Split one global micro-batch (per_rank × world buffer indices) among ranks: each rank first takes its own
    indices (i mod world == rank, in their order), then the leftovers fill the ranks with room, lowest rank first."""
    mine: list[list[int]] = [[] for _ in range(world)]
    left = []
    for i in indices:
        r = i % world
        (mine[r] if len(mine[r]) < per_rank else left).append(i)
    for r in range(world):
        while len(mine[r]) < per_rank:
            mine[r].append(left.pop(0))
    return mine


class TeacherLogitCache:
    """One round's teacher logits per owned sample: {buffer position: [response length, V]}."""

    def __init__(self, rank: int, world: int, sharded_teacher: bool, any_rank: Callable[[bool], bool]):
        self.rank, self.world = rank, world
        # a ZeRO-3 teacher's forward is collective: when any rank needs it, every rank runs one
        self.sharded, self.any_rank = sharded_teacher and world > 1, any_rank
        self.round = -1
        self.rows: dict[int, torch.Tensor] = {}
        self.computed = self.requested = 0  # rows of this round's PPO passes: run through the teacher / asked for

    def start_round(self, round_: int) -> None:
        if round_ != self.round:
            self.round, self.rows, self.computed, self.requested = round_, {}, 0, 0

    def logits(self, positions: list[int], lengths: list[int],
               forward: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """The teacher's [B, T, V] response logits of a micro-batch (T = the longest response): cached rows as kept
        (zeros beyond a response's end, where the loss is masked), the others by `forward(rows)`, a forward on those
        rows of the micro-batch only; rows this rank owns are kept for the round's later passes."""
        need = [i for i, p in enumerate(positions) if p not in self.rows]
        self.requested += len(positions)
        self.computed += len(need)
        if self.sharded and self.any_rank(bool(need)) and not need:
            forward([0])  # enter the collective forward with the others; the result is not needed here
        fresh = forward(need) if need else None
        like = fresh if fresh is not None else self.rows[positions[0]]
        out = like.new_zeros((len(positions), max(lengths), like.shape[-1]))
        for j, i in enumerate(need):
            out[i] = fresh[j]
            p = positions[i]
            if p % self.world == self.rank:
                self.rows[p] = fresh[j, : lengths[i]].clone()
        for i in sorted(set(range(len(positions))) - set(need)):
            out[i, : lengths[i]] = self.rows[positions[i]]
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.rows.values())
