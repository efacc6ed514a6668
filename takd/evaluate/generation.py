"""Sampled generation with HF `generate` (the evaluation protocol's decoding, reference §7), deterministic per seed."""

from __future__ import annotations

import sys

import torch

from takd.data.examples import Example, collate_prompts, iterate


@torch.no_grad()
def generate(model, tokenizer, examples: list[Example], *, seed: int, max_new_tokens: int, batch_size: int = 16,
             no_repeat_ngram_size: int = 0, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             progress: bool = False, synced_gpus: bool = False) -> list[str]:
    """Sample one response per example. Deterministic for a seed; does not disturb the global RNG.

    synced_gpus: the model's weights are ZeRO-3 shards, so every rank calls this with the same number of batches
    and each `generate` keeps stepping until all ranks' sequences have ended."""
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    batches = list(iterate(examples, batch_size))
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc=f"generate seed={seed}", leave=False, file=sys.stderr,
                       mininterval=0.5 if sys.stderr.isatty() else 30.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for chunk in batches:
            batch = collate_prompts(chunk, tokenizer.pad_token_id)
            batch = {k: v.to(model.device) for k, v in batch.items()}
            out = model.generate(
                **batch, do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p,
                max_new_tokens=max_new_tokens, no_repeat_ngram_size=no_repeat_ngram_size or None,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, synced_gpus=synced_gpus,
            )
            new = out[:, batch["input_ids"].shape[1]:]
            outputs.extend(cut_at_eos(t, tokenizer) for t in new.tolist())
    model.train(was_training)
    return outputs


def cut_at_eos(token_ids: list[int], tokenizer) -> str:
    if tokenizer.eos_token_id in token_ids:
        token_ids = token_ids[: token_ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(token_ids, skip_special_tokens=True).strip()
