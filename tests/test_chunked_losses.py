"""Vocabulary losses computed in chunks of positions equal the whole-tensor computation, values and gradients
(float64, 1e-6 and tighter), including strided logits slices, sampling filters and a temperature."""

from __future__ import annotations

import math

import pytest
import torch

from takd import losses as L
from takd.train.minillm import objective as M

B, T, V, CHUNK = 3, 37, 50, 8  # 37 positions per row: chunks of 8 leave a remainder of 5


def _logits(seed: int, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    full = (3 * torch.randn(B, T + 1, V, generator=g, dtype=torch.float64))
    full[0, 3, :40] = -1e4  # probabilities that underflow to exactly 0: the 0·log 0 guard must hold per chunk
    full = full.requires_grad_(grad)
    return full, full[:, :T]  # the slice a causal LM's response logits are: strided, not contiguous


def _value_and_grad(fn, chunk):
    leaf, student = _logits(0, grad=True)
    _, teacher = _logits(1)
    value = fn(student, teacher, chunk)
    (value * torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).view_as(value)).sum().backward()
    return value.detach(), leaf.grad


@pytest.mark.parametrize("kind", L.KINDS)
def test_each_divergence_in_chunks_equals_the_whole(kind):
    params = {"jsd": {"beta": 0.3}, "skl": {"lam": 0.2}, "srkl": {"lam": 0.2}}.get(kind, {})
    fn = lambda s, t, c: L.per_position_divergence(s, t, kind, chunk_positions=c, **params)  # noqa: E731
    (v1, g1), (v2, g2) = _value_and_grad(fn, None), _value_and_grad(fn, CHUNK)
    assert v1.shape == (B, T) and torch.isfinite(v1).all()
    assert torch.allclose(v1, v2, atol=1e-12, rtol=0) and torch.allclose(g1, g2, atol=1e-12, rtol=0)


def test_cross_entropies_in_chunks_equal_the_whole():
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
    labels[1, :4] = -100  # ignored positions: 0 and no gradient
    for fn in (lambda s, t, c: L.token_cross_entropy(s, labels, chunk_positions=c),
               lambda s, t, c: L.soft_cross_entropy(s, t, chunk_positions=c)):
        (v1, g1), (v2, g2) = _value_and_grad(fn, None), _value_and_grad(fn, CHUNK)
        assert torch.allclose(v1, v2, atol=1e-12, rtol=0) and torch.allclose(g1, g2, atol=1e-12, rtol=0)
    value = L.token_cross_entropy(_logits(0)[1], labels, chunk_positions=CHUNK)
    assert (value[1, :4] == 0).all()
    want = -torch.log_softmax(_logits(0)[1][0, 0], -1)[labels[0, 0]]  # by hand: −log softmax at the label
    assert value[0, 0].item() == pytest.approx(want.item(), abs=1e-12)


@pytest.mark.parametrize("filtered", [False, True])
def test_policy_terms_and_rollout_log_probs_in_chunks_equal_the_whole(filtered):
    tokens = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))
    kept, temperature = None, 1.0
    if filtered:  # a top-5 kept set per position, the sampled token inside it, temperature 0.7
        kept = torch.topk(_logits(0)[1].detach(), 5, dim=-1).indices
        tokens, temperature = kept[..., 2], 0.7
    fn = lambda s, t, c: torch.stack(M.policy_token_terms(s, t, tokens, temperature, kept, c), -1)  # noqa: E731
    (v1, g1), (v2, g2) = _value_and_grad(fn, None), _value_and_grad(fn, CHUNK)
    assert torch.isfinite(v1).all()
    assert torch.allclose(v1, v2, atol=1e-12, rtol=0) and torch.allclose(g1, g2, atol=1e-12, rtol=0)
    s, t = _logits(0)[1], _logits(1)[1]
    whole = M.rollout_token_logprobs(s, t, tokens, temperature, kept, None)
    parts = M.rollout_token_logprobs(s, t, tokens, temperature, kept, CHUNK)
    for key in ("logq_old", "logp", "logp_mix", "rkl"):
        assert torch.allclose(whole[key], parts[key], atol=1e-12, rtol=0), key
    # the policy's log q is the rollout's log q_old for the same weights; the reward's teacher is unfiltered
    assert torch.allclose(v1[..., 0], whole["logq_old"], atol=1e-12)
    assert torch.allclose(whole["logp"], torch.log_softmax(t, -1).gather(-1, tokens[..., None])[..., 0], atol=1e-12)
    # the single-step term and a pure-student rollout's logged KL are one quantity: KL(q‖p) on the kept set
    assert torch.allclose(v1[..., 1], whole["rkl"], atol=1e-12)


def test_single_step_hand_case_through_the_chunked_terms():
    q = torch.tensor([[[0.5, 0.5]]]).log()
    p = torch.tensor([[[0.25, 0.75]]]).log()
    logq, rkl = M.policy_token_terms(q, p, torch.tensor([[0]]), chunk_positions=1)
    assert logq.item() == pytest.approx(math.log(0.5))
    assert rkl.item() == pytest.approx(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))


@pytest.mark.parametrize("method", ["minillm", "kd"])
def test_a_training_step_in_small_chunks_equals_the_whole_tensor_step(method, trained_teacher, tmp_path, monkeypatch):
    """Through the trainers (policy terms, single-step term, PT LM+KD, rollout scoring; KD's divergence and CE):
    chunks of 3 positions give the step the whole tensors give."""
    from takd.train.config import stage_config
    from takd.train.run import trainer_for

    steps = []
    for elements in (2**40, None):  # one chunk for everything; then 3 positions per chunk
        cfg = stage_config(method, name="c", student="tiny-s", teacher=str(trained_teacher), max_steps=1,
                           output_dir=str(tmp_path / str(elements)), batch_size=4, micro_batch_size=4,
                           max_new_tokens=12, max_prompt_tokens=128, eval_prompts=4, tensorboard=False)
        if method == "minillm":
            cfg.minillm.num_rollouts, cfg.minillm.rollout_batch_size, cfg.minillm.pt_chunk_tokens = 4, 4, 32
        trainer = trainer_for(cfg)
        trainer.setup()
        monkeypatch.setattr(L, "CHUNK_ELEMENTS", elements or 3 * len(trainer.tokenizer))
        steps.append(trainer.optimizer_step())
    keys = [k for k in steps[0] if k in ("loss", "pg", "reg", "pt", "ce", "kd", "reward")]
    assert len(keys) >= 2
    for k in keys:
        assert float(steps[1][k]) == pytest.approx(float(steps[0][k]), abs=1e-6), k
