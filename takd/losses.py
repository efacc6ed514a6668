"""Token-level divergences between a teacher and a student over the full vocabulary, and the masked means.

Notation: p = softmax(teacher logits), q = softmax(student logits), over the vocabulary V at each position.
All per-position values are computed from log-softmax, bf16/fp16 inputs upcast to float32, so that
underflowed probabilities give exact zeros in p·log p terms rather than NaN. The teacher is detached:
gradients reach the student only.

Reduction everywhere: token mean over valid positions, Σ mask·d / Σ mask (an all-masked batch gives 0).
Sources: forward/reverse KL and the KD mix follow MiniLLM's `get_distil_loss` (reference §5); TVD, JSD and the
skew KLs follow DistiLLM's definitions, parameterised so `lam`/`beta` read as below.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

KINDS = ("fkl", "rkl", "tvd", "jsd", "skl", "srkl")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ mask·values / Σ mask over all entries (0 when the mask is empty). values, mask: same shape."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are computed in float32; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _xlogy_diff(a_prob: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Σ_v a·(log a − log b), with 0·(anything) = 0 where a underflowed to 0.

    The mask is applied to the log difference *before* the product so that neither the value nor the
    gradient sees 0·(−inf) = NaN (a `where` after the product still back-propagates NaN).
    """
    diff = torch.where(a_prob > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a_prob * diff).sum(-1)


def forward_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ_v p (log p − log q), per position. Shapes [..., V] -> [...]."""
    return _xlogy_diff(log_p.exp(), log_p, log_q)


def reverse_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """KL(q‖p) = Σ_v q (log q − log p), per position (mode-seeking: MiniLLM's objective)."""
    return _xlogy_diff(log_q.exp(), log_q, log_p)


def total_variation(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """TVD = ½ Σ_v |p − q|, per position."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w·a + (1−w)·b) computed stably with logsumexp."""
    w = torch.tensor([weight_a, 1.0 - weight_a], dtype=log_a.dtype, device=log_a.device)
    stacked = torch.stack([log_a, log_b], dim=0) + w.clamp_min(1e-38).log().view(2, *([1] * log_a.dim()))
    return torch.logsumexp(stacked, dim=0)


def js_divergence(log_q: torch.Tensor, log_p: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalised JSD: m = β·p + (1−β)·q;  β·KL(p‖m) + (1−β)·KL(q‖m), per position."""
    log_m = _log_mix(log_p, log_q, beta)
    return beta * _xlogy_diff(log_p.exp(), log_p, log_m) + (1 - beta) * _xlogy_diff(log_q.exp(), log_q, log_m)


def skew_forward_kl(log_q: torch.Tensor, log_p: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """Skew forward KL: Σ_v p (log p − log(λ·p + (1−λ)·q)), per position."""
    return _xlogy_diff(log_p.exp(), log_p, _log_mix(log_p, log_q, lam))


def skew_reverse_kl(log_q: torch.Tensor, log_p: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """Skew reverse KL: Σ_v q (log q − log(λ·q + (1−λ)·p)), per position."""
    return _xlogy_diff(log_q.exp(), log_q, _log_mix(log_q, log_p, lam))


_PER_POSITION: dict[str, Callable[..., torch.Tensor]] = {
    "fkl": forward_kl, "rkl": reverse_kl, "tvd": total_variation,
    "jsd": js_divergence, "skl": skew_forward_kl, "srkl": skew_reverse_kl,
}
_PARAMS = {"jsd": ("beta",), "skl": ("lam",), "srkl": ("lam",)}


def _check_params(kind: str, params: dict) -> None:
    if kind not in _PER_POSITION:
        raise ValueError(f"unknown divergence kind {kind!r}; allowed: {', '.join(KINDS)}")
    allowed = _PARAMS.get(kind, ())
    for name, value in params.items():
        if name not in allowed:
            raise ValueError(f"divergence {kind!r} takes no parameter {name!r}; allowed: {list(allowed) or 'none'}")
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"divergence {kind!r}: {name} must be in (0, 1), got {value}")


def per_position_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str,
                            **params: float) -> torch.Tensor:
    """Divergence at every position: logits [..., V] -> [...] (float32; teacher detached)."""
    _check_params(kind, params)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: student {student_logits.shape[-1]}, teacher "
                         f"{teacher_logits.shape[-1]}; the chain's models must share one tokenizer")
    log_q = F.log_softmax(upcast(student_logits), dim=-1)
    log_p = F.log_softmax(upcast(teacher_logits.detach()), dim=-1)
    return _PER_POSITION[kind](log_q, log_p, **params)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, kind: str,
               **params: float) -> torch.Tensor:
    """Token-mean divergence Σ mask·d / Σ mask. logits [B, T, V], mask [B, T] (bool) -> scalar."""
    return masked_mean(per_position_divergence(student_logits, teacher_logits, kind, **params), mask)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """−Σ_v p log q per position: the reference's word-level KD term (= fkl + H(p); same gradient as fkl)."""
    log_q = F.log_softmax(upcast(student_logits), dim=-1)
    p = F.softmax(upcast(teacher_logits.detach()), dim=-1)
    return -torch.where(p > 0, p * log_q, torch.zeros_like(log_q)).sum(-1)


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """−log q(label) per position (0 where label == -100). logits [B, T, V] (already aligned), labels [B, T]."""
    return F.cross_entropy(upcast(logits).transpose(1, 2), labels.clamp_min(0), reduction="none") * (labels >= 0)


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align logits at position t with the label at t+1 (HF causal-LM convention)."""
    return logits[:, :-1], labels[:, 1:]
