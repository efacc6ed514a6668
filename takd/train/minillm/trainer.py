"""MiniLLM trainer: reverse-KL policy gradient with teacher-mixed rollouts (reference §2–§3).

Per round: sample `num_rollouts` prompts, roll out from p̃ = (1−α)·q + α·p with KV caches and score each token
(`rollouts.RolloutCollector`), then make `ppo_epochs` shuffled passes over the buffer (`buffer.RolloutBuffer`).
Each micro-batch's loss is

    policy_loss(ρ = q_θ/p̃, A = whiten(G/N)) + single_step_rkl + lm_coef · pt_loss

(`objective`), and the student stays in eval mode (no dropout) throughout, as the reference does. The buffer and
its pass position are part of the checkpoint, so a resumed run continues the same trajectory.

Several processes: each PPO micro-batch is a global one (micro_batch_size × ranks) of which each rank takes its
slice; token means are global (`token_share`), whitening statistics all-reduced: N ranks follow the single-process
trajectory of the same global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from takd import dist
from takd.config import ConfigError
from takd.data.corpus import PretrainingCorpus, pack_corpus
from takd.data.examples import EpochSampler, encode_rows
from takd.data.rows import data_dir, load_rows
from takd.models.corpora import BUILTIN, resolve_corpus
from takd.models.loading import disable_dropout
from takd.models.registry import base_model_name
from takd.sampling import response_logits
from takd.train.loop import Trainer
from takd.train.minillm import objective as M
from takd.train.minillm.buffer import RolloutBuffer, collate_rollouts
from takd.train.minillm.rollouts import RolloutCollector
from takd.train.minillm.teacher_cache import TeacherLogitCache
from takd.train.validation import validation_examples


class MiniLLMTrainer(Trainer):
    needs_teacher = True

    def setup(self) -> None:
        super().setup()
        # reference: no dropout during RL. It stays in train mode (with every dropout at 0, the same computation)
        # because transformers checkpoints activations only in train mode; decoding switches to eval by itself.
        disable_dropout(self.student)
        self.student.train()
        cfg = self.cfg
        if cfg.minillm.num_rollouts // self.world < cfg.micro_batch_size:
            raise ConfigError(f"minillm.num_rollouts={cfg.minillm.num_rollouts} gives each of {self.world} "
                              f"process(es) fewer rollouts than micro_batch_size={cfg.micro_batch_size}; raise "
                              "num_rollouts or lower micro_batch_size")
        self.buffer = RolloutBuffer(seed=cfg.seed, ppo_epochs=cfg.minillm.ppo_epochs)
        self.collector = RolloutCollector(cfg, self.student, self.teacher, self.tokenizer, self.backend,
                                          self.train_examples)
        self.rollout_stats: dict[str, float] = {}
        ds = cfg.deepspeed
        self.teacher_cache = TeacherLogitCache(
            self.rank, self.world, ds.enabled and ds.teacher_placement == "zero3",
            lambda missing: dist.all_reduce_sum([float(missing)])[0] > 0) \
            if cfg.minillm.teacher_cache and cfg.minillm.single_step else None
        # the held-out reverse KL's prompts: the first validation prompts, counted apart from `eval_prompts` (a
        # sampled per-token estimate is noisier than Rouge-L and may want more of them)
        self.rev_kl_examples = validation_examples(cfg, self.tokenizer, cfg.minillm.val_rev_kl_prompts)
        self.corpus = self.load_corpus() if cfg.minillm.pt_loss != "none" else None
        self.pt_sampler = EpochSampler(len(self.corpus), seed=cfg.seed + 2) if self.corpus is not None else None

    def build_train_examples(self):
        """MiniLLM trains on its own rollouts: only the training prompts are needed (reference §1: prompt-only data)."""
        cfg = self.cfg
        return encode_rows(load_rows(cfg.dataset, "train", seed=0), self.tokenizer, cfg.max_prompt_tokens,
                           cfg.max_new_tokens, with_response=False, prompt_format=cfg.prompt_format)

    def load_corpus(self) -> PretrainingCorpus:
        """The PT loss's corpus (`takd.models.corpora`): the authors' for a real model, the toy one for tiny models
        or when asked; a corpus tokenised for another vocabulary is refused before training starts."""
        cfg = self.cfg
        where = resolve_corpus(cfg.pt_dataset, cfg.student)
        if where == BUILTIN:
            from takd.data.builtin import pretraining_corpus

            chunk = min(cfg.minillm.pt_chunk_tokens, self.student.config.max_position_embeddings)
            where = data_dir("builtin-pt") / f"{base_model_name(cfg.student).replace('/', '_')}-{chunk}"
            if not (where / "train_0.idx").is_file():
                pack_corpus(pretraining_corpus(), self.tokenizer, chunk, where)
        corpus = PretrainingCorpus(where)
        problem = corpus.check_vocabulary(self.student.get_input_embeddings().num_embeddings)
        if problem:
            raise ConfigError(f"pt_dataset: {problem}")
        return corpus

    # ------------------------------------------------------------------------------------------ PPO passes
    def collect(self, round_: int):
        samples, self.rollout_stats = self.collector.collect(round_)
        return samples

    def micro_batches(self):
        m = self.cfg.micro_batch_size
        return [collate_rollouts(self.buffer.next_micro_batch(m, self.world, self.rank, self.collect,
                                                              owner_first=self.teacher_cache is not None),
                                 self.tokenizer.pad_token_id) for _ in range(self.backend.accum)]

    def micro_weight(self, batch) -> float:
        return 1.0  # reference: DeepSpeed averages micro-batch token means over accumulation steps

    def loss_terms(self, batch):
        mc = self.cfg.minillm
        mask, tokens, kept = batch["mask"], batch["response_ids"], batch.get("kept_ids")
        temperature = mc.sampling.temperature
        s_logits = response_logits(self.backend.train_forward, batch)
        t_logits = None
        if mc.single_step:
            with torch.no_grad():
                t_logits = self.teacher_logits(batch)
        # one log-softmax per chunk of positions, two uses: the policy ratio and the single-step term; with a
        # sampling filter both on the student's rollout-time kept set (reference §2b), dropped positions masked out
        logq_all, single_step = M.policy_token_terms(s_logits, t_logits, tokens, temperature, kept)
        logq = torch.where(mask, logq_all, torch.zeros_like(logq_all))
        returns = M.normalized_returns(batch["rewards"], mask, mc.gamma, mc.length_norm)
        if mc.whiten:
            # statistics over [B × max_new_tokens] with zero padding, as the reference pads responses to 256
            padded = F.pad(returns, (0, self.cfg.max_new_tokens - returns.shape[1]))
            returns = M.whiten(padded, all_reduce=dist.all_reduce_tensor)[:, : returns.shape[1]]
        pg, pg_stats = M.policy_loss(logq, batch["logq_old"], batch["weights"], returns.detach(), mask, mc.clip)
        local = float(mask.sum())
        (total,) = dist.all_reduce_sum([local])
        share = M.token_share(local, total, self.world)
        terms = {"pg": pg * share, **{k: v * share for k, v in pg_stats.items()}}
        loss = terms["pg"]
        if single_step is not None:
            terms["reg"] = M.masked_mean(single_step, mask) * share
            loss = loss + terms["reg"]
        if self.corpus is not None:
            terms["pt"] = self.pt_term()
            loss = loss + mc.lm_coef * terms["pt"]
        terms["loss"] = loss
        terms.update({k: torch.tensor(v) for k, v in self.rollout_stats.items()})
        if self.teacher_cache is not None:  # the share of this round's teacher rows that ran the teacher
            terms["teacher_rows"] = torch.tensor(self.teacher_cache.computed / max(self.teacher_cache.requested, 1))
        return terms

    def teacher_logits(self, batch) -> torch.Tensor:
        """The teacher's response logits of a micro-batch: a forward, or with the teacher cache the round's kept
        rows and a forward on the others only."""
        if self.teacher_cache is None:
            return response_logits(self.teacher, batch)
        self.teacher_cache.start_round(self.buffer.round)

        def forward(rows: list[int]) -> torch.Tensor:
            return response_logits(self.teacher, {k: batch[k][rows] for k in ("input_ids", "attention_mask",
                                                                             "response_ids")})

        return self.teacher_cache.logits(batch["positions"].tolist(), batch["lengths"].tolist(), forward)

    def pt_term(self) -> torch.Tensor:
        mc = self.cfg.minillm
        m = self.cfg.micro_batch_size  # chunks are full: equal token counts, so rank means average exactly
        idx = self.pt_sampler.next_indices(m * self.world)[self.rank * m: (self.rank + 1) * m]
        b = dist.to_device(self.corpus.batch(idx, self.tokenizer.pad_token_id), self.backend.device)
        logits = self.backend.train_forward(input_ids=b["input_ids"]).logits
        t_logits = None
        if mc.pt_loss == "lm+kd":
            with torch.no_grad():
                t_logits = self.teacher(input_ids=b["input_ids"]).logits
        return M.pt_loss(logits, t_logits, b["labels"], mc.kd_ratio, mc.pt_loss)

    # --------------------------------------------------------------------------------------- validation
    def extra_validation(self) -> dict[str, float]:
        rkl, length = self.collector.student_rev_kl(self.rev_kl_examples, self.cfg.seed)
        return {"val_rev_kl": rkl, "val_response_len": length}

    # -------------------------------------------------------------------------------------- checkpointing
    def method_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "prompt_sampler": self.collector.prompt_sampler.state_dict(),
                "pt_sampler": self.pt_sampler.state_dict() if self.pt_sampler else None,
                "rollout_stats": self.rollout_stats}

    def load_method_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.collector.prompt_sampler.load_state_dict(state["prompt_sampler"])
        if self.pt_sampler and state["pt_sampler"]:
            self.pt_sampler.load_state_dict(state["pt_sampler"])
        self.rollout_stats = state["rollout_stats"]
