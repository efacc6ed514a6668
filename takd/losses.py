"""Token-level divergences between a teacher and a student over the full vocabulary, and the masked means.

Notation: p = softmax(teacher logits), q = softmax(student logits), over the vocabulary V at each position.
All per-position values are computed from log-softmax, bf16/fp16 inputs upcast to float32, so that
underflowed probabilities give exact zeros in p·log p terms rather than NaN. The teacher is detached:
gradients reach the student only.

Reduction everywhere: token mean over valid positions, Σ mask·d / Σ mask (an all-masked batch gives 0).
Sources: forward/reverse KL and the KD mix follow MiniLLM's `get_distil_loss` (reference §5); TVD, JSD and the
skew KLs follow DistiLLM's definitions, parameterised so `lam`/`beta` read as below.

Memory: every [..., V] float32 intermediate (the upcast, log-softmaxes, probabilities, products) exists for one
chunk of positions at a time (`chunked`, `CHUNK_ELEMENTS` per [chunk × V] tensor); the backward pass recomputes one
chunk at a time and writes its gradient into the student logits' gradient, so autograd keeps no intermediate.
Values and gradients are those of the unchunked computation (tested); `chunk_positions=None` computes the whole
tensor at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

KINDS = ("fkl", "rkl", "tvd", "jsd", "skl", "srkl")
# the float32 elements of one [chunk × V] intermediate: 32 MiB, i.e. 166 positions at a 50k vocabulary, 65 at 128k
CHUNK_ELEMENTS = 2**23
AUTO = -1  # chunk_positions: size chunks by CHUNK_ELEMENTS and the vocabulary


def chunk_size(chunk_positions: int | None, vocab: int) -> int | None:
    """Positions per chunk: as given, or (AUTO) as many as fit CHUNK_ELEMENTS; None = the whole tensor at once."""
    return max(1, CHUNK_ELEMENTS // vocab) if chunk_positions == AUTO else chunk_positions


def _spans(shape: torch.Size, chunk: int) -> list[tuple[int, int, int]]:
    """(row, start, end) of each chunk of positions: slices of one row, so views of a strided tensor."""
    return [(b, t, min(t + chunk, shape[1])) for b in range(shape[0]) for t in range(0, shape[1], chunk)]


def _slice(t: torch.Tensor | None, span: tuple[int, int, int]) -> torch.Tensor | None:
    return None if t is None else t[span[0], span[1]: span[2]]


def _assemble(parts: list[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """Per-chunk results [n, ...] back into [B, T, ...]."""
    return torch.cat(parts, 0).reshape(shape[0], shape[1], *parts[0].shape[1:])


class _ChunkedStudent(torch.autograd.Function):
    """fn over chunks of positions with a gradient for the first input only (the student's logits): the forward
    keeps no intermediate, the backward recomputes one chunk at a time and writes its gradient into one [B, T, V]
    buffer — at most one chunk's float32 intermediates exist at any time, in either pass."""

    @staticmethod
    def forward(ctx, fn, chunk, student, *others):
        ctx.fn, ctx.others, ctx.spans = fn, others, _spans(student.shape, chunk)
        ctx.save_for_backward(student)
        parts = [fn(_slice(student, sp), *(_slice(o, sp) for o in others)) for sp in ctx.spans]
        return _assemble(parts, student.shape)

    @staticmethod
    def backward(ctx, grad_out):
        (student,) = ctx.saved_tensors
        grad = torch.zeros_like(student)
        for sp in ctx.spans:
            piece = _slice(student, sp).detach().requires_grad_(True)
            with torch.enable_grad():
                out = ctx.fn(piece, *(_slice(o, sp) for o in ctx.others))
            (g,) = torch.autograd.grad(out, piece, grad_out[sp[0], sp[1]: sp[2]].reshape(out.shape))
            grad[sp[0], sp[1]: sp[2]] = g
        return (None, None, grad, *([None] * len(ctx.others)))


def chunked(fn: Callable[..., torch.Tensor], student: torch.Tensor, *others: torch.Tensor | None,
            chunk_positions: int | None = AUTO) -> torch.Tensor:
    """fn(student, *others) computed over chunks of positions: the same values and the same gradient (for
    `student` only; `others` — teacher logits, token ids, kept-set ids or None — take none).

    Inputs share their two leading dims [B, T] (logits [B, T, V], tokens [B, T], kept ids [B, T, K]); fn maps slices
    [n, ...] to [n] or [n, k]. Chunks are slices of one row (views: a strided logits slice is never copied whole).
    """
    chunk_positions = chunk_size(chunk_positions, student.shape[-1])
    if chunk_positions is None or student.dim() < 3 or student.shape[0] * student.shape[1] <= chunk_positions:
        return fn(student, *others)
    if torch.is_grad_enabled() and student.requires_grad:
        return _ChunkedStudent.apply(fn, chunk_positions, student, *others)
    parts = [fn(_slice(student, sp), *(_slice(o, sp) for o in others)) for sp in _spans(student.shape, chunk_positions)]
    return _assemble(parts, student.shape)


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
                            chunk_positions: int | None = AUTO, **params: float) -> torch.Tensor:
    """Divergence at every position: logits [B, T, V] -> [B, T] (float32; teacher detached; in chunks)."""
    _check_params(kind, params)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"vocabulary sizes differ: student {student_logits.shape[-1]}, teacher "
                         f"{teacher_logits.shape[-1]}; the chain's models must share one tokenizer")
    def per_chunk(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return _PER_POSITION[kind](F.log_softmax(upcast(s), dim=-1), F.log_softmax(upcast(t), dim=-1), **params)

    return chunked(per_chunk, student_logits, teacher_logits.detach(), chunk_positions=chunk_positions)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, kind: str,
               chunk_positions: int | None = AUTO, **params: float) -> torch.Tensor:
    """Token-mean divergence Σ mask·d / Σ mask. logits [B, T, V], mask [B, T] (bool) -> scalar."""
    return masked_mean(per_position_divergence(student_logits, teacher_logits, kind, chunk_positions, **params),
                       mask)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       chunk_positions: int | None = AUTO) -> torch.Tensor:
    """−Σ_v p log q per position: the reference's word-level KD term (= fkl + H(p); same gradient as fkl)."""
    def per_chunk(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_q, p = F.log_softmax(upcast(s), dim=-1), F.softmax(upcast(t), dim=-1)
        return -torch.where(p > 0, p * log_q, torch.zeros_like(log_q)).sum(-1)

    return chunked(per_chunk, student_logits, teacher_logits.detach(), chunk_positions=chunk_positions)


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, chunk_positions: int | None = AUTO
                        ) -> torch.Tensor:
    """−log q(label) per position (0 where label == -100). logits [B, T, V] (already aligned), labels [B, T]."""
    def per_chunk(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(upcast(x).reshape(-1, x.shape[-1]), y.reshape(-1).clamp_min(0),
                               reduction="none").reshape(y.shape) * (y >= 0)

    return chunked(per_chunk, logits, labels, chunk_positions=chunk_positions)


def shift_for_next_token(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align logits at position t with the label at t+1 (HF causal-LM convention)."""
    return logits[:, :-1], labels[:, 1:]
