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
    AUTO,
    chunked,
    masked_mean,
    per_position_divergence,
    reverse_kl,
    soft_cross_entropy,
    token_cross_entropy,
    upcast,
)
from takd.sampling import restricted_logits


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
    Returns (loss, {clip_frac, ratio, approx_kl}) with detached diagnostics; approx_kl = mean ½(log q_θ − log q_old)²
    (the k2 estimator PPO implementations log): 0 at a round's first mini-batch when log q_old and the training
    forward agree, so it also measures the sampler/forward mismatch.
    """
    ratio = torch.exp(logq - logq_old) * weights
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped > unclipped).float(), mask),
                 "ratio": masked_mean(ratio, mask),
                 "approx_kl": masked_mean(0.5 * (logq - logq_old) ** 2, mask)}
    return loss, stats


def single_step_rkl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
    """Exact per-position reverse KL Σ_v q_θ(v)(log q_θ(v) − log p(v)), token-mean, differentiable through q_θ.

    logits [B, T, V] at the positions predicting the response tokens; not weighted by w (reference §2b).
    """
    return masked_mean(per_position_divergence(student_logits, teacher_logits, "rkl"), mask)


def policy_token_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, tokens: torch.Tensor,
                       temperature: float = 1.0, kept_ids: torch.Tensor | None = None,
                       chunk_positions: int | None = AUTO) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per response position, in chunks of positions: log q_θ(y_t), and with teacher logits the exact single-step
    KL(q_θ‖p) = Σ_v q_θ(v)(log q_θ(v) − log p(v)) — both on the student's rollout-time kept set when a sampling
    filter is on (reference §2b: its inf_mask), at the sampling temperature.

    One log-softmax per chunk serves both (the ratio's log q and the single-step term). logits [B, T, V], tokens
    [B, T], kept_ids [B, T, K] or None -> ([B, T], [B, T] or None); differentiable through the student only.
    """
    def per_chunk(s: torch.Tensor, t: torch.Tensor | None, tok: torch.Tensor, kept: torch.Tensor | None
                  ) -> torch.Tensor:
        log_q = log_probs(restricted_logits(s, temperature, kept))
        out = [take(log_q, tok)]
        if t is not None:
            out.append(reverse_kl(log_q, log_probs(restricted_logits(t, temperature, kept))))
        return torch.stack(out, -1)

    teacher = None if teacher_logits is None else teacher_logits.detach()
    terms = chunked(per_chunk, student_logits, teacher, tokens, kept_ids, chunk_positions=chunk_positions)
    return terms[..., 0], (terms[..., 1] if teacher is not None else None)


def rollout_token_logprobs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tokens: torch.Tensor,
                           temperature: float = 1.0, kept_ids: torch.Tensor | None = None,
                           chunk_positions: int | None = AUTO) -> dict[str, torch.Tensor]:
    """A rollout's per-token log-probabilities for scoring (reference §2a), in chunks of positions, no gradient:
    `logq_old` = log q(y_t) on the kept set at the sampling temperature; `logp` = log p(y_t), the reward's teacher
    (full vocabulary, temperature 1); `logp_mix` = the mixture's teacher, on the kept set at the temperature (= logp
    when unfiltered at T = 1); `rkl` = KL(q‖p_mix) at each position (the exact reverse KL of a pure-student
    rollout). All [B, T]."""
    def per_chunk(s: torch.Tensor, t: torch.Tensor, tok: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
        log_q, log_p = log_probs(restricted_logits(s, temperature, kept)), log_probs(t)
        unfiltered = kept is None and temperature == 1.0
        log_p_mix = log_p if unfiltered else log_probs(restricted_logits(t, temperature, kept))
        return torch.stack([take(log_q, tok), take(log_p, tok), take(log_p_mix, tok), reverse_kl(log_q, log_p_mix)],
                           -1)

    with torch.no_grad():
        terms = chunked(per_chunk, student_logits, teacher_logits, tokens, kept_ids, chunk_positions=chunk_positions)
    return dict(zip(("logq_old", "logp", "logp_mix", "rkl"), terms.unbind(-1), strict=True))


def pt_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
            kd_ratio: float, mode: str = "lm+kd", chunk_positions: int | None = AUTO) -> torch.Tensor:
    """Pretraining loss on packed corpus chunks: (1 − r)·LM + r·(−Σ_v p log q_θ), token-mean (reference §2b).

    mode "lm" is the paper's plain LM loss; "lm+kd" the code's (kd_ratio 0.5). labels are already aligned.
    """
    mask = labels >= 0
    if mode == "lm" or kd_ratio == 0.0:
        return masked_mean(token_cross_entropy(student_logits, labels, chunk_positions), mask)
    if teacher_logits is None:
        raise ValueError("pt_loss mode 'lm+kd' needs teacher logits")

    def per_chunk(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([token_cross_entropy(s[None], y[None], None)[0],
                            soft_cross_entropy(s, t, None)], -1)  # one chunk: both terms, one gradient pass

    both = chunked(per_chunk, student_logits, teacher_logits.detach(), labels, chunk_positions=chunk_positions)
    return (1.0 - kd_ratio) * masked_mean(both[..., 0], mask) + kd_ratio * masked_mean(both[..., 1], mask)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """log softmax over the vocabulary, half precision upcast to float32. [..., V] -> [..., V]."""
    return torch.log_softmax(upcast(logits), dim=-1)


def take(log_probs_all: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The log-probability of each sampled token. [B, T, V], [B, T] -> [B, T]."""
    return log_probs_all.gather(-1, tokens[..., None]).squeeze(-1)
