"""MiniLLM's objective as small pure functions over tensors (reference §2a–§2b, paper arXiv 2306.08543).

Notation: q_θ = current student, q_old = student at rollout time, p = teacher, α = teacher-mix weight,
p̃ = (1 − α)·q_old + α·p the sampling distribution. Per-token tensors are [B, T] over the response
positions (T = response length); `mask` is true on valid positions (content tokens and the first EOS).

The code-vs-paper choices (reference §10) are switches on the callers' side: γ = 0.95 (code) vs 1 (paper),
whitening on (code) vs off, the return including r_t (code). The trainer composes these functions; collectives
(the all-reduce of whitening statistics) are passed in, never called from here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from takd.losses import (
    masked_mean,
    per_position_divergence,
    reverse_kl,
    soft_cross_entropy,
    token_cross_entropy,
    upcast,
)


def importance_weights(logq_old: torch.Tensor, logp: torch.Tensor, alpha: float) -> torch.Tensor:
    """w_t = q_old(y_t) / ((1 − α)·q_old(y_t) + α·p(y_t)) = 1 / ((1 − α) + α·exp(log p − log q_old)).

    Per token, neither clipped nor multiplied across time (reference §2a.7). α = 0 gives w = 1.
    """
    return 1.0 / ((1.0 - alpha) + alpha * torch.exp(logp - logq_old))


def token_rewards(logp: torch.Tensor, logq_old: torch.Tensor, mask: torch.Tensor, scaling: float = 1.0,
                  clip: float = float("inf")) -> torch.Tensor:
    """r_t = clip((log p(y_t) − log q_old(y_t)) / scaling, ±clip), 0 at invalid positions (reference §2a.8)."""
    r = ((logp - logq_old) / scaling).clamp(-clip, clip)
    return torch.where(mask, r, torch.zeros_like(r))


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = Σ_{t' ≥ t} γ^{t'−t} r_{t'} along the last axis. rewards [B, T] -> [B, T].

    Computed as one matmul with the upper-triangular discount matrix D[t, t'] = γ^{t'−t} (t' ≥ t), which is
    exact, vectorised, and cheap for T ≤ a few hundred.
    """
    T = rewards.shape[-1]
    idx = torch.arange(T, device=rewards.device)
    expo = (idx[None, :] - idx[:, None]).to(rewards.dtype)  # [t, t'] = t' − t
    D = torch.where(expo >= 0, torch.pow(torch.tensor(gamma, dtype=rewards.dtype), expo.clamp_min(0)),
                    torch.zeros((), dtype=rewards.dtype))
    return rewards @ D.T


def normalized_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float, length_norm: bool = True
                       ) -> torch.Tensor:
    """A_t = G_t / N_t with N_t = number of valid positions from t to the end inclusive; 0 where invalid.

    With valid tokens 1..L, N_t = L − t + 1 (reference §2b "Length normalisation"). length_norm=False
    returns G_t (masked) — the "without length normalisation" ablation.
    """
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    G = discounted_returns(rewards, gamma)
    if length_norm:
        remaining = mask.flip(-1).long().cumsum(-1).flip(-1).to(G.dtype)
        G = G / remaining.clamp_min(1.0)
    return torch.where(mask, G, torch.zeros_like(G))


def whiten(x: torch.Tensor, eps: float = 1e-8,
           all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) over every entry of x (padded zeros included, as the reference).

    mean = Σx / n, var = Σ(x − mean)² / n (biased), the sums and n summed over ranks by `all_reduce` (e.g.
    `takd.dist.all_reduce_tensor`; None = this process only): the reference's global-statistics helper, which it
    uses on one GPU too. So one process and N ranks whiten the same global micro-batch identically. The mean is not
    added back; callers detach the result.
    """
    reduce = all_reduce or (lambda t: t)
    stats = reduce(torch.stack([x.sum(), torch.tensor(float(x.numel()), dtype=x.dtype, device=x.device)]))
    mean = stats[0] / stats[1]
    sq = reduce(((x - mean) ** 2).sum())
    return (x - mean) * torch.rsqrt(sq / stats[1] + eps)


def token_share(local_tokens: float, global_tokens: float, world: int) -> float:
    """n_r·W / Σ_r n_r for this rank's n_r valid tokens of a global micro-batch: a rank's token mean times this,
    averaged over the W ranks (as data-parallel gradients are), is the token mean of the whole global micro-batch.
    1 in a single process; 1 for an empty micro-batch."""
    return local_tokens * world / global_tokens if global_tokens else 1.0


def policy_loss(logq: torch.Tensor, logq_old: torch.Tensor, weights: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clipped policy gradient with the teacher-mix importance weight inside the ratio.

    ρ_t = exp(log q_θ − log q_old)·w_t  (= q_θ/p̃);  loss = Σ mask·max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) / Σ mask.
    Returns (loss, {clip_frac, ratio}) with detached diagnostics.
    """
    ratio = torch.exp(logq - logq_old) * weights
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def single_step_rkl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
    """Exact per-position reverse KL Σ_v q_θ(v)(log q_θ(v) − log p(v)), token-mean, differentiable through q_θ.

    logits [B, T, V] at the positions predicting the response tokens; not weighted by w (reference §2b).
    """
    return masked_mean(per_position_divergence(student_logits, teacher_logits, "rkl"), mask)


def single_step_rkl_from_logprobs(log_q: torch.Tensor, log_p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`single_step_rkl` from log-softmaxed inputs [B, T, V], for callers that already hold them."""
    return masked_mean(reverse_kl(log_q, log_p.detach()), mask)


def pt_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
            kd_ratio: float, mode: str = "lm+kd") -> torch.Tensor:
    """Pretraining loss on packed corpus chunks: (1 − r)·LM + r·(−Σ_v p log q_θ), token-mean (reference §2b).

    mode "lm" is the paper's plain LM loss; "lm+kd" the code's (kd_ratio 0.5). labels are already aligned.
    """
    mask = labels >= 0
    lm = masked_mean(token_cross_entropy(student_logits, labels), mask)
    if mode == "lm" or kd_ratio == 0.0:
        return lm
    if teacher_logits is None:
        raise ValueError("pt_loss mode 'lm+kd' needs teacher logits")
    kd = masked_mean(soft_cross_entropy(student_logits, teacher_logits), mask)
    return (1.0 - kd_ratio) * lm + kd_ratio * kd


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log softmax over the vocabulary, half precision upcast to float32. [..., V] -> [..., V]."""
    return torch.log_softmax(upcast(logits), dim=-1)


def take(log_probs_all: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The log-probability of each sampled token. [B, T, V], [B, T] -> [B, T]."""
    return log_probs_all.gather(-1, tokens[..., None]).squeeze(-1)
