"""Exposure bias (ExAccErr) as in the MiniLLM evaluation (reference §7; Arora et al. 2022).

For each prompt, a continuation is sampled from the student (for R) and one from the teacher (for ε). At every
response position t the forward KL from teacher to student, KL_t = Σ_v p(v)(log p(v) − log q(v)), is computed
and masked beyond the end; R(l) and ε(l) are the cumulative sums Σ_{t≤l} KL_t, averaged over samples and prompts:

    ExAccErr(l) = (R(l) − ε(l)) / ε(l) × 100          (0 where ε(l) = 0, e.g. student == teacher)

Difference from the reference code: it slices logits from the prompt length onward and so skips the first
response token; here every response position counts.
"""

from __future__ import annotations

import torch

from takd.data.examples import Example, collate_prompts, iterate
from takd.losses import per_position_divergence
from takd.sampling import mixed_sample, response_logits


@torch.no_grad()
def _cumulative_kl(student, teacher, tokenizer, examples: list[Example], *, sampler: str, max_new_tokens: int,
                   seed: int, batch_size: int) -> torch.Tensor:
    """Σ over prompts of the cumulative masked KL_t, as a [max_new_tokens] vector (caller divides by N)."""
    total = torch.zeros(max_new_tokens, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    for chunk in iterate(examples, batch_size):
        p = collate_prompts(chunk, tokenizer.pad_token_id)
        ro = mixed_sample(student, teacher, p["input_ids"], p["attention_mask"],
                          alpha=0.0 if sampler == "student" else 1.0, max_new_tokens=max_new_tokens,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, generator=gen)
        batch = ro.as_batch()
        kl = per_position_divergence(response_logits(student, batch), response_logits(teacher, batch), "fkl")
        kl = (kl * ro.response_mask).double().cumsum(-1)  # [B, T]
        T = kl.shape[1]
        if T < max_new_tokens:  # every row ended early: the cumulative sum stays flat afterwards
            kl = torch.cat([kl, kl[:, -1:].expand(-1, max_new_tokens - T)], 1)
        total += kl.sum(0)
    return total


def exposure_bias(student, teacher, tokenizer, examples: list[Example], *, max_new_tokens: int = 256,
                  samples_per_prompt: int = 1, seed: int = 10, batch_size: int = 16) -> dict[str, list[float]]:
    """R(l), ε(l) and ExAccErr(l) for l = 1..max_new_tokens."""
    n = len(examples) * samples_per_prompt
    R = torch.zeros(max_new_tokens, dtype=torch.float64)
    eps = torch.zeros(max_new_tokens, dtype=torch.float64)
    for k in range(samples_per_prompt):
        kw = dict(max_new_tokens=max_new_tokens, seed=seed + k, batch_size=batch_size)
        R += _cumulative_kl(student, teacher, tokenizer, examples, sampler="student", **kw)
        eps += _cumulative_kl(student, teacher, tokenizer, examples, sampler="teacher", **kw)
    R, eps = R / n, eps / n
    err = torch.where(eps > 0, (R - eps) / eps.clamp_min(1e-30) * 100.0, torch.zeros_like(R))
    return {"R": R.tolist(), "eps": eps.tolist(), "ex_acc_err": err.tolist()}
