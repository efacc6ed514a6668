"""MiniLLM's rollouts: teacher-mixed sampling of a round's prompts and the scoring of every sampled token
(reference §2a), plus the pure-student rollout that measures the reverse KL to the teacher (logging only).

Several processes: each rank rolls out its share of the round's prompts, every sample keyed by its position in the
round's global prompt stream (so it is the sample one process would have drawn); the scored samples are then
gathered on every rank in that order.
"""

from __future__ import annotations

import torch

from takd import dist
from takd.data.examples import EpochSampler, Example, collate_prompts
from takd.sampling import (
    collate_sequences,
    mixed_sample,
    response_logits,
    stream_keys,
    student_reverse_kl_sums,
)
from takd.train.backend import Backend
from takd.train.config import MiniLLMStage
from takd.train.minillm import objective as M
from takd.train.minillm.buffer import Sample


class RolloutCollector:
    """Draws a round's prompts, rolls them out from p̃ = (1 − α)·q + α·p and scores each token."""

    def __init__(self, cfg: MiniLLMStage, student, teacher, tokenizer, backend: Backend, prompts: list[Example]):
        self.cfg, self.mc = cfg, cfg.minillm
        self.student, self.teacher, self.tokenizer, self.backend = student, teacher, tokenizer, backend
        self.prompts = prompts
        self.prompt_sampler = EpochSampler(len(prompts), seed=cfg.seed + 1)
        # half-precision compute: the sampler's incremental (KV-cached) log-probs differ from a full forward by more
        # than the PPO clip, so q_old comes from a fresh forward like the training one: the ratio compares like
        # with like (float32: equal up to rounding, tested, so the recorded values are used)
        self.rescore = cfg.minillm.rescore or cfg.dtype != "float32"

    @torch.no_grad()
    def collect(self, round_: int) -> tuple[list[Sample], dict[str, float]]:
        """Round `round_`'s scored samples (gathered from every rank, in prompt-stream order) and their stats."""
        mc, world = self.mc, self.backend.world
        per_rank = mc.num_rollouts // world  # num_rollouts is global (reference §3)
        sums = {"reward": 0.0, "tokens": 0.0, "rkl": 0.0, "length": 0.0}
        with self.backend.generating():
            local = self.roll_out(round_, per_rank, sums)
        samples = sorted((x for part in dist.all_gather_objects(local) for x in part), key=lambda x: x.position)
        reward, tokens, rkl, length = dist.all_reduce_sum([sums["reward"], sums["tokens"], sums["rkl"],
                                                           sums["length"]])
        stats = {"reward": reward / max(tokens, 1), "response_len": length / max(len(samples), 1)}
        if mc.alpha == 0.0:  # the rollout is pure-student already: its reverse KL came free with the scoring
            stats.update(rev_kl=rkl / max(length, 1), student_response_len=stats["response_len"])
        elif mc.log_student_rev_kl:  # the reference's extra student-only rollout, for logging only
            n_log = mc.rollout_batch_size * world
            first = [self.prompts[i] for i in self.prompt_sampler.peek_order()[:n_log]]
            rkl, student_len = self.student_rev_kl(first, self.cfg.seed * 100_003 + round_ + 1)
            stats.update(rev_kl=rkl, student_response_len=student_len)
        return samples, stats

    def roll_out(self, round_: int, per_rank: int, sums: dict[str, float]) -> list[Sample]:
        """This rank's scored samples for the round: draws of n·W prompts, each rank sampling its n."""
        cfg, mc, s = self.cfg, self.mc, self.mc.sampling
        rank, world = self.backend.rank, self.backend.world
        local: list[Sample] = []
        for start in range(0, per_rank, mc.rollout_batch_size):
            n = min(mc.rollout_batch_size, per_rank - start)
            idx = self.prompt_sampler.next_indices(n * world)
            mine = range(rank * n, (rank + 1) * n)
            positions = [start * world + j for j in mine]
            chunk = [self.prompts[idx[j]] for j in mine]
            p = dist.to_device(collate_prompts(chunk, self.tokenizer.pad_token_id), self.backend.device)
            ro = mixed_sample(self.student, self.teacher, p["input_ids"], p["attention_mask"], alpha=mc.alpha,
                              max_new_tokens=cfg.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
                              pad_token_id=self.tokenizer.pad_token_id, temperature=s.temperature, top_k=s.top_k,
                              top_p=s.top_p, row_keys=stream_keys(cfg.seed, round_, positions),
                              record_logprobs=not self.rescore, synced=self.backend.lockstep)
            local.extend(self.score(chunk, ro, sums, positions))
        return local

    def score(self, chunk: list[Example], ro, sums: dict[str, float], positions: list[int]) -> list[Sample]:
        """Teacher/student log-probs of the sampled tokens, importance weights and rewards (reference §2a).

        With a sampling filter both distributions are taken on the student's rollout-time kept set; positions where
        q_old or the teacher is then −inf (a teacher-mixed token outside that set) are dropped from the loss."""
        mc, s = self.mc, self.mc.sampling
        responses = [ro.response_ids[i, : int(ro.lengths[i])].tolist() for i in range(len(chunk))]
        T = max(len(r) for r in responses)
        mask = ro.response_mask[:, :T]
        kept = ro.kept_ids[:, :T] if ro.kept_ids is not None else None
        if ro.student_logprobs is not None and ro.teacher_logprobs is not None and mc.alpha > 0.0:
            # α > 0: both models ran at every sampling step, so the log-probs are already there (no second pass)
            logq_old, logp_reward = ro.student_logprobs[:, :T], ro.teacher_logprobs[:, :T]
            logp_mix = ro.teacher_mix_logprobs[:, :T]
        else:
            batch = dist.to_device(collate_sequences([e.prompt_ids for e in chunk], responses,
                                                     self.tokenizer.pad_token_id), self.backend.device)
            tokens, mask = batch["response_ids"], batch["mask"]
            t_logits = response_logits(self.teacher, batch)
            with self.backend.compute():
                s_logits = response_logits(self.student, batch)
            # the reward's teacher: full vocabulary, no temperature (reference §2a.4); the mixture's on the kept set
            lp = M.rollout_token_logprobs(s_logits, t_logits, tokens, s.temperature, kept)
            logq_old, logp_reward, logp_mix = lp["logq_old"], lp["logp"], lp["logp_mix"]
            if mc.alpha == 0.0:  # pure-student rollout: its exact reverse KL is the logged one, free here
                sums["rkl"] += float((lp["rkl"] * mask).sum())
        valid = mask & torch.isfinite(logq_old) & torch.isfinite(logp_mix)
        logq_old, logp_mix = (torch.where(valid, x, torch.zeros_like(x)) for x in (logq_old, logp_mix))
        weights = M.importance_weights(logq_old, logp_mix, mc.alpha)
        rewards = M.token_rewards(logp_reward, logq_old, valid, mc.reward_scaling, mc.reward_clip)
        sums["reward"] += float(rewards.sum())
        sums["tokens"] += float(valid.sum())
        sums["length"] += float(mask.sum())
        filtered = kept is not None
        return [Sample(e.prompt_ids, r, logq_old[i, : len(r)].tolist(), weights[i, : len(r)].tolist(),
                       rewards[i, : len(r)].tolist(), positions[i],
                       valid[i, : len(r)].tolist() if filtered else None,
                       kept[i, : len(r)].tolist() if filtered else None)
                for i, (e, r) in enumerate(zip(chunk, responses, strict=True))]

    @torch.no_grad()
    def student_rev_kl(self, examples: list[Example], seed: int) -> tuple[float, float]:
        """Exact per-token reverse KL to the teacher on pure-student samples (α = 0), and their mean length.

        Logging only, as the reference's second, student-only rollout (reference §2a.9): it never enters the loss.
        Ranks take shares of `examples`; the sums are all-reduced.
        """
        cfg, rank = self.cfg, self.backend.rank
        shard, real = dist.padded_shard(examples, rank, self.backend.world)
        first = rank * len(shard)
        p = dist.to_device(collate_prompts(shard, self.tokenizer.pad_token_id), self.backend.device)
        with self.backend.generating():
            sums = student_reverse_kl_sums(self.student, self.teacher, p["input_ids"], p["attention_mask"],
                                           max_new_tokens=cfg.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
                                           pad_token_id=self.tokenizer.pad_token_id, synced=self.backend.lockstep,
                                           row_keys=stream_keys(seed, 0, list(range(first, first + len(shard)))),
                                           rows=real)
        rkl, tokens, n = dist.all_reduce_sum([sums["rkl"], sums["tokens"], sums["rows"]])
        return rkl / max(tokens, 1.0), tokens / max(n, 1.0)
