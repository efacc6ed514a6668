"""The supervised methods on the shared loop: SFT, word-level KD and SeqKD (reference §5)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from takd import dist
from takd.data.examples import Example, encode_rows
from takd.data.rows import load_rows, references, write_jsonl
from takd.losses import divergence, masked_mean, shift_for_next_token, token_cross_entropy
from takd.train.loop import Trainer
from takd.train.validation import SEQKD_STREAM, sharded_generate


def sft_terms(forward, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Response-only cross-entropy: token mean of −log q(y_t) over the gold response."""
    out = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits, labels = shift_for_next_token(out.logits, batch["labels"])
    ce = masked_mean(token_cross_entropy(logits, labels), labels >= 0)
    return {"loss": ce, "ce": ce}


class SFTTrainer(Trainer):
    """SFT w/o KD: response-only cross-entropy (reference §5)."""

    def loss_terms(self, batch):
        return sft_terms(self.backend.train_forward, batch)


class KDTrainer(Trainer):
    """Word-level KD on gold responses: (1 − r)·CE + r·D(teacher ‖ student), teacher-forced (reference §5).

    With D = fkl this has the reference's gradient; the reference logs −Σ p log q (= fkl + H(p)), we log fkl.
    """

    needs_teacher = True

    def loss_terms(self, batch):
        kd = self.cfg.kd
        out = self.backend.train_forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        with torch.no_grad():
            t_logits = self.teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits, labels = shift_for_next_token(out.logits, batch["labels"])
        mask = labels >= 0
        ce = masked_mean(token_cross_entropy(logits, labels), mask)
        div = divergence(logits, t_logits[:, :-1], mask, kd.divergence, **kd.params())
        return {"loss": (1 - kd.kd_ratio) * ce + kd.kd_ratio * div, "ce": ce, kd.divergence: div}


class SeqKDTrainer(KDTrainer):
    """SeqKD: train on one teacher sample per training prompt, kept in `<output_dir>/seqkd_data.jsonl`; the loss is
    KD (the reference's scripts) or SFT (the paper) on those samples."""

    def build_train_examples(self) -> list[Example]:
        cfg = self.cfg
        path = self.out / "seqkd_data.jsonl"
        if not path.is_file():
            self.generate_teacher_data(path)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return encode_rows(rows, self.tokenizer, cfg.max_prompt_tokens, cfg.max_new_tokens,
                           prompt_format=cfg.prompt_format)

    def generate_teacher_data(self, path: Path) -> None:
        cfg, s = self.cfg, self.cfg.seqkd.sampling
        rows = load_rows(cfg.dataset, "train", seed=0)
        prompts = encode_rows(rows, self.tokenizer, cfg.max_prompt_tokens, cfg.max_new_tokens, with_response=False,
                              prompt_format=cfg.prompt_format)
        if self.rank == 0:
            print(f"[{cfg.name}] SeqKD: teacher {cfg.teacher} samples {len(prompts)} responses on {self.world} "
                  f"process(es) -> {path}", flush=True)
        # keyed per-prompt streams: the same teacher samples on 1 or N processes
        outs = sharded_generate(self.teacher, self.tokenizer, prompts, seed=cfg.seed, stream=SEQKD_STREAM,
                                max_new_tokens=cfg.max_new_tokens, batch_size=cfg.seqkd.generation_batch_size,
                                device=self.backend.device, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                synced=self.backend.lockstep, progress=self.rank == 0)
        if self.rank == 0:
            write_jsonl(path, [{**e.row, "gold_output": references(e.row)[0], "output": o}
                               for e, o in zip(prompts, outs, strict=True)])  # complete or absent
        dist.barrier()

    def loss_terms(self, batch):
        if self.cfg.seqkd.loss == "kd":
            return super().loss_terms(batch)
        return sft_terms(self.backend.train_forward, batch)


TRAINERS: dict[str, type[Trainer]] = {"sft": SFTTrainer, "kd": KDTrainer, "seqkd": SeqKDTrainer}
