"""Divergences against hand-computed values, gradient checks, and the error contract."""

from __future__ import annotations

import math

import pytest
import torch

from takd.losses import KINDS, divergence, masked_mean, per_position_divergence, soft_cross_entropy

NEG = -1e4  # a logit whose probability underflows to exactly 0 in float32


def _logits(probs):
    return torch.tensor([[math.log(p) if p > 0 else NEG for p in probs]])


# Case A: teacher p = [.5, .5, 0], student q = [.25, .25, .5]   (zero-probability teacher entry)
P_A, Q_A = _logits([0.5, 0.5, 0.0]), _logits([0.25, 0.25, 0.5])
# Case B: the roles swapped                                      (zero-probability student entry)
P_B, Q_B = _logits([0.25, 0.25, 0.5]), _logits([0.5, 0.5, 0.0])
LN2 = math.log(2)
HAND = {
    # Σ p log(p/q) = 2·.5·ln(.5/.25)
    ("fkl", "A", ()): LN2,
    # ½ Σ|p − q| = ½(.25 + .25 + .5)
    ("tvd", "A", ()): 0.5,
    # m = [.375,.375,.25]; .5·KL(p‖m) + .5·KL(q‖m) = .5·ln(4/3) + .5·(.5·ln(2/3) + .5·ln 2)
    ("jsd", "A", ()): 0.5 * math.log(4 / 3) + 0.5 * (0.5 * math.log(2 / 3) + 0.5 * LN2),
    # Σ p log(p / (.1p + .9q)) = ln(.5/.275)
    ("skl", "A", ()): math.log(0.5 / 0.275),
    # Σ q log(q/p) with q = [.5,.5,0], p = [.25,.25,.5] = ln 2
    ("rkl", "B", ()): LN2,
    # Σ q log(q / (.1q + .9p)) = ln(.5/.275)
    ("srkl", "B", ()): math.log(0.5 / 0.275),
    # jsd with beta = 0.25: m = .25p + .75q = [.3125,.3125,.375]
    ("jsd", "A", (("beta", 0.25),)): 0.25 * (2 * 0.5 * math.log(0.5 / 0.3125))
    + 0.75 * (2 * 0.25 * math.log(0.25 / 0.3125) + 0.5 * math.log(0.5 / 0.375)),
}


@pytest.mark.parametrize(("kind", "case", "params"), list(HAND))
def test_divergence_matches_hand_computation(kind, case, params):
    s, t = (Q_A, P_A) if case == "A" else (Q_B, P_B)
    got = per_position_divergence(s, t, kind, **dict(params))
    assert got.item() == pytest.approx(HAND[(kind, case, params)], abs=1e-6)
    assert torch.isfinite(got).all()


def test_masked_position_is_excluded_and_mean_is_over_valid_tokens():
    # position 0: case A (fkl = ln 2); position 1: identical distributions (0); position 2: masked garbage
    s = torch.cat([Q_A, P_A, torch.tensor([[50.0, -50.0, 0.0]])])[None]  # [1, 3, 3]
    t = torch.cat([P_A, P_A, torch.tensor([[-50.0, 50.0, 0.0]])])[None]
    mask = torch.tensor([[True, True, False]])
    assert divergence(s, t, mask, "fkl").item() == pytest.approx(LN2 / 2, abs=1e-6)
    assert divergence(s, t, torch.zeros_like(mask), "fkl").item() == 0.0  # all masked -> 0, no NaN


@pytest.mark.parametrize("kind", KINDS)
def test_zero_for_identical_and_positive_otherwise(kind):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert divergence(a, a.clone(), mask, kind).item() == pytest.approx(0.0, abs=1e-6)
    assert divergence(a, b, mask, kind).item() > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 7, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(2, 3, 7, dtype=torch.float64, generator=g)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    assert torch.autograd.gradcheck(lambda x: divergence(x, t, mask, kind), (s,))


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_student_only_and_no_nan_with_underflow(kind):
    s = torch.tensor([[[0.0, 1.0, NEG, 2.0]]], requires_grad=True)
    t = torch.tensor([[[1.0, NEG, 0.5, 2.0]]], requires_grad=True)
    loss = divergence(s, t, torch.ones(1, 1, dtype=torch.bool), kind)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert t.grad is None


def test_bf16_inputs_are_computed_in_float32():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(1, 4, 50, generator=g), torch.randn(1, 4, 50, generator=g)
    mask = torch.ones(1, 4, dtype=torch.bool)
    full = divergence(s, t, mask, "rkl")
    half = divergence(s.bfloat16(), t.bfloat16(), mask, "rkl")
    assert half.dtype == torch.float32 and half.item() == pytest.approx(full.item(), rel=0.05)


def test_errors_name_allowed_values():
    with pytest.raises(ValueError, match="allowed: fkl, rkl, tvd, jsd, skl, srkl"):
        divergence(Q_A, P_A, torch.ones(1, dtype=torch.bool), "kl")
    with pytest.raises(ValueError, match=r"beta must be in \(0, 1\)"):
        divergence(Q_A, P_A, torch.ones(1, dtype=torch.bool), "jsd", beta=1.5)
    with pytest.raises(ValueError, match="takes no parameter 'lam'"):
        divergence(Q_A, P_A, torch.ones(1, dtype=torch.bool), "fkl", lam=0.1)
    with pytest.raises(ValueError, match="vocabulary sizes differ"):
        divergence(torch.zeros(1, 4), torch.zeros(1, 5), torch.ones(1, dtype=torch.bool), "fkl")


def test_soft_cross_entropy_is_fkl_plus_teacher_entropy():
    ce = soft_cross_entropy(Q_A, P_A).item()  # -Σ p log q = ln 4; H(p) = ln 2
    assert ce == pytest.approx(math.log(4), abs=1e-6)
    assert ce == pytest.approx(per_position_divergence(Q_A, P_A, "fkl").item() + LN2, abs=1e-6)


def test_masked_mean_hand_case():
    v = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    m = torch.tensor([[True, True, False], [False, True, True]])
    assert masked_mean(v, m).item() == pytest.approx((1 + 2 + 4 + 5) / 4)
