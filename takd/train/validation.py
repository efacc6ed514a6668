"""In-training validation, sharded over ranks: the gold-response cross-entropy and one sampled response per prompt
(Rouge-L), as the reference's in-training evaluation (one sample per prompt, no n-gram block; reference §7).

Each rank takes a contiguous share of the validation prompts padded to equal length (`dist.padded_shard`), so that
lockstep (ZeRO-3) forwards stay in step; sums are all-reduced and generations gathered: every rank gets the same
metrics.
"""

from __future__ import annotations

import torch

from takd import dist
from takd.data.examples import Example, collate_sft
from takd.evaluate.generation import generate
from takd.losses import shift_for_next_token, token_cross_entropy


@torch.no_grad()
def response_cross_entropy_sums(model, examples: list[Example], pad_id: int, batch_size: int,
                                device: torch.device | str = "cpu", n_real: int | None = None) -> tuple[float, float]:
    """(Σ token CE, token count) over the gold responses of the first `n_real` examples (the rest are padding that
    keeps ranks in lockstep). Leaves `model` in train mode if it was."""
    was_training = model.training
    model.eval()
    n_real = len(examples) if n_real is None else n_real
    num, den = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        b = dist.to_device(collate_sft(examples[i: i + batch_size], pad_id), device)
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        logits, labels = shift_for_next_token(out.logits, b["labels"])
        labels[max(0, n_real - i):] = -100  # padding rows count for nothing
        num += float(token_cross_entropy(logits, labels).sum())
        den += float((labels >= 0).sum())
    model.train(was_training)
    return num, den


def response_cross_entropy(model, examples: list[Example], pad_id: int, batch_size: int,
                           device: torch.device | str = "cpu") -> float:
    """Token-mean CE of the gold responses (the init-selection criterion, reference §1)."""
    num, den = response_cross_entropy_sums(model, examples, pad_id, batch_size, device)
    return num / max(den, 1.0)


def validation_loss(model, examples: list[Example], pad_id: int, batch_size: int, device) -> float:
    """Token-mean gold-response CE over all ranks' shares."""
    shard, real = dist.padded_shard(examples, dist.rank(), dist.world_size())
    num, den = response_cross_entropy_sums(model, shard, pad_id, batch_size, device, n_real=real)
    num, den = dist.all_reduce_sum([num, den])
    return num / max(den, 1.0)


def validation_generations(model, tokenizer, examples: list[Example], *, seed: int, max_new_tokens: int,
                           synced: bool) -> list[str]:
    """One sample per validation prompt; ranks generate their shares (synchronised under ZeRO-3), all get all."""
    rank = dist.rank()
    shard, real = dist.padded_shard(examples, rank, dist.world_size())
    preds = generate(model, tokenizer, shard, seed=seed + rank, max_new_tokens=max_new_tokens,
                     no_repeat_ngram_size=0, synced_gpus=synced)[:real]
    return [p for part in dist.all_gather_objects(preds) for p in part]


class BestKeeper:
    """Which validation result is the best so far, by `select_by` (rouge_l: highest; loss: lowest; last: none)."""

    def __init__(self, select_by: str, best: float | None = None):
        self.select_by, self.best = select_by, best

    def improves(self, metrics: dict[str, float]) -> bool:
        if self.select_by == "last":
            return False
        value = metrics["val_rouge_l"] if self.select_by == "rouge_l" else -metrics["val_loss"]
        if self.best is None or value > self.best:
            self.best = value
            return True
        return False
