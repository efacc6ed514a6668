"""In-training validation, sharded over ranks: the gold-response cross-entropy and one sampled response per prompt
(Rouge-L), as the reference's in-training evaluation (one sample per prompt, no n-gram block; reference §7).

Each rank takes a contiguous share of the validation prompts padded to equal length (`dist.padded_shard`), so that
lockstep (ZeRO-3) forwards stay in step; sums are all-reduced and generations gathered: every rank gets the same
metrics. Samples are drawn from keyed per-prompt streams (`keyed_generate`): a prompt's sample depends on the seed
and its place in the validation set, not on the rank or batch it lands in, so validation Rouge-L and the best
checkpoint are the same on 1 or N GPUs.
"""

from __future__ import annotations

import torch

from takd import dist
from takd.data.examples import Example, collate_prompts, collate_sft, encode_rows, iterate
from takd.data.rows import load_rows
from takd.evaluate.generation import cut_at_eos
from takd.losses import shift_for_next_token, token_cross_entropy
from takd.sampling import mixed_sample, reverse_kl_over, stream_keys

VALIDATION_STREAM = 1 << 20  # key streams; MiniLLM rollout rounds use 0, 1, 2, ... (far below)
SEQKD_STREAM = (1 << 20) + 1


def validation_examples(cfg, tokenizer, n: int) -> list[Example]:
    """A stage's first `n` validation prompts with their gold responses, encoded as its training encodes them (the
    same list for validation loss and Rouge-L, `eval_prompts`, and MiniLLM's held-out reverse KL)."""
    return encode_rows(load_rows(cfg.dataset, "valid"), tokenizer, cfg.max_prompt_tokens, cfg.max_new_tokens,
                       prompt_format=cfg.prompt_format)[:n]


def held_out_reverse_kl(student, teacher, examples: list[Example], tokenizer, *, max_new_tokens: int,
                        seed: int) -> float:
    """MiniLLM's validation estimate on one process: per-token KL(q‖p) on the student's own samples of `examples`,
    decoded as one batch from sampling stream (seed, 0) as the trainer's (`RolloutCollector.student_rev_kl`)."""
    sums = reverse_kl_over(student, teacher, examples, tokenizer.pad_token_id, tokenizer.eos_token_id,
                           max_new_tokens=max_new_tokens, seed=seed, batch_size=len(examples))
    return sums["rkl"] / max(sums["tokens"], 1.0)


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


@torch.no_grad()
def keyed_generate(model, tokenizer, examples: list[Example], *, seed: int, stream: int, first_position: int,
                   max_new_tokens: int, batch_size: int, device, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0, synced: bool = False, progress: bool = False) -> list[str]:
    """One sampled response per example, example i drawn from the keyed stream (seed, stream, first_position + i):
    independent of batch composition and rank. synced: every rank calls with the same number of batches (ZeRO-3)."""
    batches = list(iterate(examples, batch_size))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="generate", leave=False, mininterval=30.0)
    out, position = [], first_position
    for chunk in batches:
        p = dist.to_device(collate_prompts(chunk, tokenizer.pad_token_id), device)
        ro = mixed_sample(model, None, p["input_ids"], p["attention_mask"], alpha=0.0, max_new_tokens=max_new_tokens,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          temperature=temperature, top_k=top_k, top_p=top_p, synced=synced,
                          row_keys=stream_keys(seed, stream, range(position, position + len(chunk))))
        out.extend(cut_at_eos(ro.response_ids[i][ro.response_mask[i]].tolist(), tokenizer) for i in range(len(chunk)))
        position += len(chunk)
    return out


def sharded_generate(model, tokenizer, examples: list[Example], **kw) -> list[str]:
    """`keyed_generate` over all ranks: each samples its padded share, every rank gets every sample, in order."""
    rank, world = dist.rank(), dist.world_size()
    shard, real = dist.padded_shard(examples, rank, world)
    first = rank * len(shard)  # padded shards are equal: rank r's items start at r·len(shard)
    preds = keyed_generate(model, tokenizer, shard, first_position=first, **kw)[:real]
    return [p for part in dist.all_gather_objects(preds) for p in part]


def validation_generations(model, tokenizer, examples: list[Example], *, seed: int, max_new_tokens: int,
                           batch_size: int, device, synced: bool) -> list[str]:
    """One sample per validation prompt at temperature 1, no filter (the reference's in-training validation)."""
    return sharded_generate(model, tokenizer, examples, seed=seed, stream=VALIDATION_STREAM,
                            max_new_tokens=max_new_tokens, batch_size=batch_size, device=device, synced=synced)


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
