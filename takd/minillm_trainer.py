"""MiniLLM trainer: reverse-KL policy gradient with teacher-mixed rollouts (reference §2–§3).

Per round: sample `num_rollouts` prompts, roll out from p̃ = (1−α)·q + α·p with KV caches, score each token
(teacher log-prob on the full vocabulary, a fresh student forward for log q_old, importance weight w, reward
r = log p − log q_old), then make `ppo_epochs` shuffled passes over the buffer. Each micro-batch's loss is

    policy_loss(ρ = q_θ/p̃, A = whiten(G/N)) + single_step_rkl + lm_coef · pt_loss

and the student stays in eval mode (no dropout) throughout, as the reference does. The buffer and its pass
position are part of the checkpoint, so a resumed run continues the same trajectory.

Several processes: each rank rolls out its share of the round's prompts, every sample keyed by its position in
the round's global prompt stream (so it is the sample one process would have drawn); the buffer is then gathered
on every rank in that order, and each PPO micro-batch is a global one (micro_batch_size × ranks) of which each
rank takes its slice. Token means are global (`token_share`), whitening statistics all-reduced: N ranks follow
the single-process trajectory of the same global batch.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from takd import distributed
from takd import engine as engine_lib
from takd import minillm as M
from takd.config import ConfigError
from takd.data import EpochSampler, PackedCorpus, collate_prompts, data_dir, encode_rows, load_rows, pack_corpus
from takd.losses import per_position_divergence, reverse_kl
from takd.models import base_model_name
from takd.rollout import collate_sequences, mixed_sample, pad_right, process_logits, response_logits
from takd.trainer import Trainer


@dataclass
class Sample:
    """One scored rollout; per-token lists have the response length L (valid tokens only)."""

    prompt_ids: list[int]
    response_ids: list[int]
    logq_old: list[float]
    weights: list[float]
    rewards: list[float]
    position: int = 0  # place in its round's global prompt stream (the gathered buffer's order)


def rollout_keys(seed: int, round_: int, positions: list[int]) -> torch.Tensor:
    """Per-row sampling keys: (seed, round) in the high 31 bits, the prompt's stream position in the low 32."""
    high = (seed * 1_000_003 + round_) % 2**31
    return torch.tensor([high * 2**32 + p for p in positions], dtype=torch.long)


def collate_rollouts(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """`collate_sequences` plus the per-token rollout tensors [B, T] (zero/one padded)."""
    return {
        **collate_sequences([s.prompt_ids for s in samples], [s.response_ids for s in samples], pad_id),
        "logq_old": pad_right([s.logq_old for s in samples], 0.0, torch.float32),
        "weights": pad_right([s.weights for s in samples], 1.0, torch.float32),
        "rewards": pad_right([s.rewards for s in samples], 0.0, torch.float32),
    }


class MiniLLMTrainer(Trainer):
    needs_teacher = True

    def setup(self) -> None:
        self.buffer: list[Sample] = []
        self.pass_order: list[int] = []  # buffer indices left in the current PPO pass
        self.passes_left = 0  # PPO passes still to make over the current buffer
        self.round = 0  # rollout collections so far
        super().setup()
        self.student.eval()  # reference: no dropout during RL
        cfg = self.cfg
        self.prompts = self.train_examples
        if cfg.minillm.num_rollouts // self.world < cfg.micro_batch_size:
            raise ConfigError(f"minillm.num_rollouts={cfg.minillm.num_rollouts} gives each of {self.world} "
                              f"process(es) fewer rollouts than micro_batch_size={cfg.micro_batch_size}; raise "
                              "num_rollouts or lower micro_batch_size")
        self.prompt_sampler = EpochSampler(len(self.prompts), seed=cfg.seed + 1)
        self.corpus = self.load_corpus() if cfg.minillm.pt_loss != "none" else None
        self.pt_sampler = EpochSampler(len(self.corpus), seed=cfg.seed + 2) if self.corpus is not None else None
        if self._pending_extra:
            self._apply_extra(self._pending_extra)

    def build_train_examples(self):
        """MiniLLM trains on its own rollouts: only the training prompts are needed (reference §1: prompt-only data)."""
        cfg = self.cfg
        return encode_rows(load_rows(cfg.dataset, "train", seed=0), self.tokenizer, cfg.max_prompt_tokens,
                           cfg.max_new_tokens, with_response=False)

    def load_corpus(self) -> PackedCorpus:
        cfg = self.cfg
        chunk = min(cfg.minillm.pt_chunk_tokens, self.student.config.max_position_embeddings)
        if cfg.pt_dataset in (None, "builtin"):
            from takd.builtin_task import pretraining_corpus

            prefix = data_dir("builtin-pt") / f"{base_model_name(cfg.student).replace('/', '_')}-{chunk}"
            if not prefix.with_suffix(".json").is_file():
                pack_corpus(pretraining_corpus(), self.tokenizer, chunk, prefix)
            return PackedCorpus(prefix)
        return PackedCorpus(Path(cfg.pt_dataset))

    # --------------------------------------------------------------------------------------------- rollouts
    @torch.no_grad()
    def collect_rollouts(self) -> None:
        cfg, mc = self.cfg, self.cfg.minillm
        # num_rollouts is global (reference §3): each draw of n·W prompts from the stream gives every rank n
        per_rank = mc.num_rollouts // self.world
        stats = {"reward": 0.0, "tokens": 0.0, "rkl": 0.0}
        with self.generating():
            local = self.roll_out(per_rank, stats)
        gathered = engine_lib.all_gather_objects(local)
        self.buffer = sorted((x for part in gathered for x in part), key=lambda x: x.position)
        self.round += 1
        reward, tokens, rkl = engine_lib.all_reduce_sum([stats["reward"], stats["tokens"], stats["rkl"]])
        self.rollout_stats = {"reward": reward / max(tokens, 1), "response_len": tokens / max(len(self.buffer), 1)}
        if mc.alpha == 0.0:  # the rollout is pure-student already: its reverse KL came free with the scoring
            self.rollout_stats.update(rev_kl=rkl / max(tokens, 1),
                                      student_response_len=self.rollout_stats["response_len"])
        elif mc.log_student_rev_kl:  # the reference's extra student-only rollout, for logging only
            n_log = mc.rollout_batch_size * self.world
            first = [self.prompts[i] for i in self.prompt_sampler.peek_order()[:n_log]]
            rkl, student_len = self.student_rev_kl(first, cfg.seed * 100_003 + self.round)
            self.rollout_stats.update(rev_kl=rkl, student_response_len=student_len)

    def roll_out(self, per_rank: int, stats: dict[str, float]) -> list[Sample]:
        """This rank's scored samples for the round: draws of n·W prompts, each rank sampling its n."""
        cfg, mc = self.cfg, self.cfg.minillm
        s = mc.sampling
        local: list[Sample] = []
        for start in range(0, per_rank, mc.rollout_batch_size):
            n = min(mc.rollout_batch_size, per_rank - start)
            idx = self.prompt_sampler.next_indices(n * self.world)
            mine = range(self.rank * n, (self.rank + 1) * n)
            positions = [start * self.world + j for j in mine]
            chunk = [self.prompts[idx[j]] for j in mine]
            p = distributed.to_device(collate_prompts(chunk, self.tokenizer.pad_token_id), self.device)
            ro = mixed_sample(self.student, self.teacher, p["input_ids"], p["attention_mask"], alpha=mc.alpha,
                              max_new_tokens=cfg.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
                              pad_token_id=self.tokenizer.pad_token_id, temperature=s.temperature, top_k=s.top_k,
                              top_p=s.top_p, row_keys=rollout_keys(cfg.seed, self.round, positions),
                              record_logprobs=not mc.rescore, synced=self.lockstep)
            local.extend(self.score(chunk, ro, stats, positions))
        return local

    def score(self, chunk, ro, stats, positions: list[int]) -> list[Sample]:
        """Teacher/student log-probs of the sampled tokens, importance weights and rewards (reference §2a)."""
        mc = self.cfg.minillm
        responses = [ro.response_ids[i, : int(ro.lengths[i])].tolist() for i in range(len(chunk))]
        T = max(len(r) for r in responses)
        mask = ro.response_mask[:, :T]
        if ro.student_logprobs is not None and ro.teacher_logprobs is not None and mc.alpha > 0.0:
            # α > 0: both models ran at every sampling step, so the log-probs are already there (no second pass)
            logq_old, logp_reward = ro.student_logprobs[:, :T], ro.teacher_logprobs[:, :T]
            logp_mix = ro.teacher_mix_logprobs[:, :T]
        else:
            batch = distributed.to_device(collate_sequences([e.prompt_ids for e in chunk], responses,
                                                            self.tokenizer.pad_token_id), self.device)
            tokens, mask = batch["response_ids"], batch["mask"]
            t_logits = response_logits(self.teacher, batch)
            log_p = M.log_probs(t_logits)  # full vocabulary, no temperature: the reward's teacher (reference §2a.4)
            log_q = M.log_probs(self.processed(response_logits(self.student, batch)))
            # the mixture's teacher goes through the sampling processors; with T=1, k=0, p=1 it is log_p itself
            log_p_mix = log_p if self.unfiltered else M.log_probs(self.processed(t_logits))
            logq_old, logp_reward, logp_mix = M.take(log_q, tokens), M.take(log_p, tokens), M.take(log_p_mix, tokens)
            if mc.alpha == 0.0:  # pure-student rollout: its exact reverse KL is the logged one, free here
                stats["rkl"] += float((reverse_kl(log_q, log_p_mix) * mask).sum())
        weights = M.importance_weights(logq_old, logp_mix, mc.alpha)
        rewards = M.token_rewards(logp_reward, logq_old, mask, mc.reward_scaling, mc.reward_clip)
        stats["reward"] += float(rewards.sum())
        stats["tokens"] += float(mask.sum())
        return [Sample(e.prompt_ids, r, logq_old[i, : len(r)].tolist(), weights[i, : len(r)].tolist(),
                       rewards[i, : len(r)].tolist(), positions[i])
                for i, (e, r) in enumerate(zip(chunk, responses, strict=True))]

    # ------------------------------------------------------------------------------------------ PPO passes
    def next_rollout_batch(self) -> list[Sample]:
        """This rank's slice of the next global micro-batch (micro_batch_size × ranks) of the shuffled buffer."""
        cfg = self.cfg
        m = cfg.micro_batch_size
        global_m = m * self.world
        if len(self.pass_order) < global_m:
            if self.passes_left <= 0:
                self.collect_rollouts()
                self.passes_left = cfg.minillm.ppo_epochs
            rng = random.Random(f"{cfg.seed}-{self.round}-{self.passes_left}")
            order = list(range(len(self.buffer)))
            rng.shuffle(order)
            self.pass_order = order[: len(order) - len(order) % global_m]  # drop_last
            self.passes_left -= 1
        idx, self.pass_order = self.pass_order[:global_m], self.pass_order[global_m:]
        return [self.buffer[i] for i in idx[self.rank * m: (self.rank + 1) * m]]

    def micro_batches(self):
        return [collate_rollouts(self.next_rollout_batch(), self.tokenizer.pad_token_id)
                for _ in range(self.cfg.grad_accum_steps)]

    def micro_weight(self, batch) -> float:
        return 1.0  # reference: DeepSpeed averages micro-batch token means over accumulation steps

    def token_share(self, mask: torch.Tensor) -> float:
        """n_r·W / Σ_r n_r for this rank's n_r valid tokens: times this rank's token mean, and averaged over ranks
        by the engine, it gives the token mean of the whole global micro-batch (1 in a single process)."""
        local = float(mask.sum())
        (total,) = engine_lib.all_reduce_sum([local])
        return local * self.world / total if total else 1.0

    @property
    def unfiltered(self) -> bool:
        s = self.cfg.minillm.sampling
        return s.temperature == 1.0 and s.top_k == 0 and s.top_p == 1.0

    def processed(self, logits: torch.Tensor) -> torch.Tensor:
        """The sampling processors (temperature, top-k, top-p) applied to [B, T, V] logits; a no-op when unfiltered."""
        s = self.cfg.minillm.sampling
        return logits if self.unfiltered else process_logits(logits, s.temperature, s.top_k, s.top_p)

    def loss_terms(self, batch):
        mc = self.cfg.minillm
        mask, tokens = batch["mask"], batch["response_ids"]
        log_q = M.log_probs(self.processed(response_logits(self.policy, batch)))  # one log-softmax, two uses
        logq = M.take(log_q, tokens)
        returns = M.normalized_returns(batch["rewards"], mask, mc.gamma, mc.length_norm)
        if mc.whiten:
            # statistics over [B × max_new_tokens] with zero padding, as the reference pads responses to 256
            padded = F.pad(returns, (0, self.cfg.max_new_tokens - returns.shape[1]))
            returns = M.whiten(padded)[:, : returns.shape[1]]
        pg, pg_stats = M.policy_loss(logq, batch["logq_old"], batch["weights"], returns.detach(), mask, mc.clip)
        share = self.token_share(mask)
        terms = {"pg": pg * share, **{k: v * share for k, v in pg_stats.items()}}
        loss = terms["pg"]
        if mc.single_step:
            with torch.no_grad():
                log_p = M.log_probs(self.processed(response_logits(self.teacher, batch)))
            terms["reg"] = M.single_step_rkl_from_logprobs(log_q, log_p, mask) * share
            loss = loss + terms["reg"]
        if self.corpus is not None:
            terms["pt"] = self.pt_term()
            loss = loss + mc.lm_coef * terms["pt"]
        terms["loss"] = loss
        terms.update({k: torch.tensor(v) for k, v in self.rollout_stats.items()})
        return terms

    def pt_term(self) -> torch.Tensor:
        mc = self.cfg.minillm
        m = self.cfg.micro_batch_size  # chunks are full: equal token counts, so rank means average exactly
        idx = self.pt_sampler.next_indices(m * self.world)[self.rank * m: (self.rank + 1) * m]
        b = distributed.to_device(self.corpus.batch(idx), self.device)
        logits = self.policy(input_ids=b["input_ids"]).logits
        t_logits = None
        if mc.pt_loss == "lm+kd":
            with torch.no_grad():
                t_logits = self.teacher(input_ids=b["input_ids"]).logits
        return M.pt_loss(logits, t_logits, b["labels"], mc.kd_ratio, mc.pt_loss)

    # --------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def student_rev_kl(self, examples, seed: int) -> tuple[float, float]:
        """Exact per-token reverse KL to the teacher on pure-student samples (α = 0), and their mean length.

        Logging only, as the reference's second, student-only rollout (reference §2a.9): it never enters the loss.
        Ranks take shares of `examples`; the sums are all-reduced.
        """
        cfg = self.cfg
        shard, real = self.my_share(examples)
        first = self.rank * len(shard)
        p = distributed.to_device(collate_prompts(shard, self.tokenizer.pad_token_id), self.device)
        with self.generating():
            ro = mixed_sample(self.student, None, p["input_ids"], p["attention_mask"], alpha=0.0,
                              max_new_tokens=cfg.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
                              pad_token_id=self.tokenizer.pad_token_id, synced=self.lockstep,
                              row_keys=rollout_keys(seed, 0, list(range(first, first + len(shard)))))
            batch = ro.as_batch()
            student_logits = response_logits(self.student, batch)
        per_token = per_position_divergence(student_logits, response_logits(self.teacher, batch), "rkl")
        mask = ro.response_mask[:real]
        rkl, tokens, n = engine_lib.all_reduce_sum([float((per_token[:real] * mask).sum()), float(mask.sum()),
                                                    float(real)])
        return rkl / max(tokens, 1.0), tokens / max(n, 1.0)

    def extra_validation(self) -> dict[str, float]:
        rkl, length = self.student_rev_kl(self.valid_examples[:64], self.cfg.seed)
        return {"val_rev_kl": rkl, "val_response_len": length}

    # -------------------------------------------------------------------------------------- checkpointing
    def extra_state(self):
        return {"buffer": [asdict(x) for x in self.buffer], "pass_order": self.pass_order, "round": self.round,
                "passes_left": self.passes_left, "prompt_sampler": self.prompt_sampler.state_dict(),
                "pt_sampler": self.pt_sampler.state_dict() if self.pt_sampler else None,
                "rollout_stats": getattr(self, "rollout_stats", {})}

    _pending_extra: dict | None = None

    def restore_extra(self, extra):
        # restore() runs inside Trainer.setup, before our own samplers exist: apply at the end of setup
        self._pending_extra = extra

    def _apply_extra(self, extra):
        self.buffer = [Sample(**x) for x in extra["buffer"]]
        self.pass_order, self.round, self.passes_left = extra["pass_order"], extra["round"], extra["passes_left"]
        self.prompt_sampler.load_state_dict(extra["prompt_sampler"])
        if self.pt_sampler and extra["pt_sampler"]:
            self.pt_sampler.load_state_dict(extra["pt_sampler"])
        self.rollout_stats = extra["rollout_stats"]
