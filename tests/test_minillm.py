"""MiniLLM: pure functions against hand-computed values, the teacher-mixed sampler, reverse KL's mode seeking."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from takd.losses import divergence
from takd.sampling import mixed_sample, process_logits, response_mask, restricted_logits
from takd.train.minillm import objective as M

T, F = True, False


# ------------------------------------------------------------------------------------------ pure functions
def test_importance_weights_hand_case():
    w = M.importance_weights(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.1)]), alpha=0.2)
    assert w.item() == pytest.approx(0.5 / (0.8 * 0.5 + 0.2 * 0.1))  # 1.190476
    assert M.importance_weights(torch.tensor([-3.0]), torch.tensor([-0.1]), alpha=0.0).item() == 1.0


def test_token_rewards_scale_clip_and_mask():
    logp, logq = torch.tensor([[-1.0, -5.0, -2.0]]), torch.tensor([[-2.0, -1.0, -2.0]])
    r = M.token_rewards(logp, logq, torch.tensor([[T, T, F]]), scaling=0.5, clip=3.0)
    assert r.tolist() == [[2.0, -3.0, 0.0]]  # (−1+2)/.5 = 2; (−5+1)/.5 = −8 -> clipped −3; masked 0


def test_normalized_returns_hand_case_with_masked_tail():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 7.0]])  # the 7 sits on an invalid position and must be ignored
    mask = torch.tensor([[T, T, T, F]])
    # γ = .5: G = [1 + .5·2 + .25·3, 2 + .5·3, 3] = [2.75, 3.5, 3]; N = [3, 2, 1]
    got = M.normalized_returns(rewards, mask, gamma=0.5)
    assert got[0].tolist() == pytest.approx([2.75 / 3, 3.5 / 2, 3.0, 0.0])
    raw = M.normalized_returns(rewards, mask, gamma=1.0, length_norm=False)
    assert raw[0].tolist() == pytest.approx([6.0, 5.0, 3.0, 0.0])


def test_normalized_returns_single_token_response():
    got = M.normalized_returns(torch.tensor([[-0.7, 0.0, 0.0]]), torch.tensor([[T, F, F]]), gamma=0.95)
    assert got[0].tolist() == pytest.approx([-0.7, 0.0, 0.0])


def test_discounted_returns_match_loop():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3, 17, generator=g, dtype=torch.float64)
    loop = torch.zeros_like(r)
    acc = torch.zeros(3, dtype=torch.float64)
    for t in reversed(range(17)):
        acc = r[:, t] + 0.95 * acc
        loop[:, t] = acc
    assert torch.allclose(M.discounted_returns(r, 0.95), loop)


def test_whiten_hand_case():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    want = (x - 2.5) / math.sqrt(5 / 4 + 1e-8)  # biased variance 5/4 over all entries (reference's global stats)
    assert torch.allclose(M.whiten(x), want)


def test_policy_loss_hand_case():
    logq = logq_old = torch.zeros(1, 3)
    w = torch.tensor([[1.5, 0.5, 9.0]])
    adv = torch.tensor([[1.0, -1.0, 50.0]])
    mask = torch.tensor([[T, T, F]])
    loss, stats = M.policy_loss(logq, logq_old, w, adv, mask, clip=0.2)
    # token 0: max(−1.5, −1.2) = −1.2; token 1: max(0.5, 0.8) = 0.8; mean −0.2; both clipped
    assert loss.item() == pytest.approx(-0.2)
    assert stats["clip_frac"].item() == pytest.approx(1.0)
    loss2, stats2 = M.policy_loss(torch.full((1, 3), 0.05), logq_old, torch.ones(1, 3), adv, mask, clip=0.2)
    ratio = math.exp(0.05)  # inside the clip range: plain −A·ρ
    assert loss2.item() == pytest.approx((-ratio + ratio) / 2) and stats2["clip_frac"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0 and stats2["approx_kl"].item() == pytest.approx(0.5 * 0.05**2)


def test_policy_gradient_direction():
    logq = torch.zeros(1, 1, requires_grad=True)
    loss, _ = M.policy_loss(logq, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1),
                            torch.ones(1, 1, dtype=torch.bool), clip=0.2)
    loss.backward()
    assert logq.grad.item() < 0  # positive advantage: descending the loss raises log q


def test_single_step_rkl_hand_case_and_gradient():
    s = torch.tensor([[[math.log(0.5), math.log(0.5), -1e4]]])
    t = torch.tensor([[[math.log(0.25), math.log(0.25), math.log(0.5)]]])
    val = M.single_step_rkl(s, t, torch.ones(1, 1, dtype=torch.bool))
    assert val.item() == pytest.approx(math.log(2), abs=1e-6)  # Σ q log(q/p) = ln 2
    # dKL/dz_i = q_i (log q_i − log p_i − KL): for q = [.8, .2], p = [.5, .5] the gradient is nonzero
    z = torch.tensor([[[math.log(0.8), math.log(0.2)]]], requires_grad=True)
    M.single_step_rkl(z, torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool)).backward()
    kl = 0.8 * math.log(1.6) + 0.2 * math.log(0.4)
    want = [0.8 * (math.log(1.6) - kl), 0.2 * (math.log(0.4) - kl)]
    assert z.grad[0, 0].tolist() == pytest.approx(want, abs=1e-6)


def test_pt_loss_hand_case():
    s = torch.tensor([[[math.log(0.8), math.log(0.2)]]])
    t = torch.tensor([[[math.log(0.75), math.log(0.25)]]])
    labels = torch.tensor([[0]])
    lm = -math.log(0.8)
    kd = -(0.75 * math.log(0.8) + 0.25 * math.log(0.2))
    assert M.pt_loss(s, t, labels, 0.5, "lm+kd").item() == pytest.approx(0.5 * lm + 0.5 * kd, abs=1e-6)
    assert M.pt_loss(s, None, labels, 0.5, "lm").item() == pytest.approx(lm, abs=1e-6)


# ------------------------------------------------------------------------------------------------ sampler
class FixedDistributionLM(torch.nn.Module):
    """A stand-in LM whose next-token distribution is the same at every position (for sampler statistics)."""

    def __init__(self, probs):
        super().__init__()
        self.register_buffer("logits", torch.log(torch.tensor(probs)))

    def forward(self, input_ids, past_key_values=None, logits_to_keep=0, **_):
        B, L = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(B, L, -1), past_key_values=(past_key_values or 0) + 1)


def _onehot(v, i, eps=1e-9):
    return [1.0 - eps * (v - 1) if j == i else eps for j in range(v)]


def test_teacher_mix_emits_teacher_token_alpha_fraction_of_draws():
    V, A, B_tok = 8, 3, 5
    student, teacher = FixedDistributionLM(_onehot(V, A)), FixedDistributionLM(_onehot(V, B_tok))
    n_rows, steps = 400, 5
    ids = torch.ones(n_rows, 2, dtype=torch.long)
    ro = mixed_sample(student, teacher, ids, torch.ones_like(ids), alpha=0.2, max_new_tokens=steps, eos_token_id=0,
                      pad_token_id=0, generator=torch.Generator().manual_seed(0))
    draws = ro.response_ids.numel()
    frac_b = (ro.response_ids == B_tok).float().mean().item()
    sd = math.sqrt(0.2 * 0.8 / draws)
    assert abs(frac_b - 0.2) < 4.5 * sd, frac_b
    assert set(ro.response_ids.unique().tolist()) == {A, B_tok}


def test_alpha_zero_is_the_student_distribution_and_skips_the_teacher():
    probs = [0.0, 0.5, 0.3, 0.2]
    student = FixedDistributionLM([p + 1e-12 for p in probs])
    teacher = FixedDistributionLM([0.25] * 4)
    ids = torch.ones(3000, 1, dtype=torch.long)
    kw = dict(alpha=0.0, max_new_tokens=2, eos_token_id=0, pad_token_id=0)
    ro = mixed_sample(student, teacher, ids, torch.ones_like(ids), generator=torch.Generator().manual_seed(1), **kw)
    ro_none = mixed_sample(student, None, ids, torch.ones_like(ids), generator=torch.Generator().manual_seed(1),
                           **kw)
    assert torch.equal(ro.response_ids, ro_none.response_ids)
    counts = torch.bincount(ro.response_ids.flatten(), minlength=4).float() / ro.response_ids.numel()
    for k in (1, 2, 3):
        sd = math.sqrt(probs[k] * (1 - probs[k]) / ro.response_ids.numel())
        assert abs(counts[k].item() - probs[k]) < 4.5 * sd


def _left_padded_prompts(tok, texts):
    enc = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    P = max(map(len, enc))
    ids = torch.tensor([[tok.pad_token_id] * (P - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (P - len(e)) + [1] * len(e) for e in enc])
    return ids, mask


def _gpt2(tokenizer, seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                      eos_token_id=tokenizer.eos_token_id)).eval()


@pytest.mark.parametrize("arch", ["opt", "gpt2"])
def test_cached_and_uncached_decoding_give_identical_tokens(tokenizer, arch):
    from takd.models.loading import load_model

    student = load_model("tiny-s").eval() if arch == "opt" else _gpt2(tokenizer, 0)
    teacher = load_model("tiny-m").eval() if arch == "opt" else _gpt2(tokenizer, 1)
    ids, mask = _left_padded_prompts(tokenizer, ["What is the capital of Kalomi?", "Sort: 3, 1", "Hi"])
    for seed in range(3):
        outs = [mixed_sample(student, teacher, ids, mask, alpha=0.3, max_new_tokens=12,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                             generator=torch.Generator().manual_seed(seed), use_cache=c) for c in (True, False)]
        assert torch.equal(outs[0].response_ids, outs[1].response_ids)


def test_left_padding_does_not_change_a_rows_continuation(tokenizer):
    """GPT-2 takes absolute positions from position_ids: a padded row must sample as if it were alone."""
    model = _gpt2(tokenizer, 3)
    ids, mask = _left_padded_prompts(tokenizer, ["a much longer prompt than the other one", "short"])
    alone_ids, alone_mask = _left_padded_prompts(tokenizer, ["short"])
    kw = dict(alpha=0.0, max_new_tokens=1, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
              temperature=1e-4)  # near-greedy: the argmax token must agree
    both = mixed_sample(model, None, ids, mask, generator=torch.Generator().manual_seed(0), **kw)
    alone = mixed_sample(model, None, alone_ids, alone_mask, generator=torch.Generator().manual_seed(0), **kw)
    assert both.response_ids[1].tolist() == alone.response_ids[0].tolist()


def test_rows_stop_at_eos_and_mask_includes_it():
    resp = torch.tensor([[4, 0, 0, 0], [5, 6, 7, 8], [0, 0, 0, 0]])
    assert response_mask(resp, eos_token_id=0).tolist() == [[T, T, F, F], [T, T, T, T], [T, F, F, F]]
    eos_first = FixedDistributionLM(_onehot(4, 0))
    ids = torch.ones(2, 1, dtype=torch.long)
    ro = mixed_sample(eos_first, None, ids, torch.ones_like(ids), alpha=0.0, max_new_tokens=6, eos_token_id=0,
                      pad_token_id=0)
    assert ro.response_ids.shape[1] == 1 and ro.lengths.tolist() == [1, 1]


def test_process_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(process_logits(logits, top_k=2)[0, 2:]).all()
    kept = ~torch.isinf(process_logits(logits, top_p=0.7))
    assert kept.tolist() == [[T, T, F, F]]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: two tokens kept


# ------------------------------------------------------------------------------------------- mode seeking
def _fit_unimodal(teacher_logits, kind, steps=300):
    """Best fit of a discretised Gaussian (mean, std) over K bins to the teacher under `kind`.

    Reverse KL has local optima (a wide q straddling both modes is one), so the fit is the best of several
    restarts by the objective's own value: the comparison is between the two objectives' global optima.
    """
    K = teacher_logits.shape[-1]
    x = torch.arange(K, dtype=torch.float32)
    mask = torch.ones(1, 1, dtype=torch.bool)
    best = None
    for mu0 in (6.0, 12.0, 20.0, 28.0, 34.0):
        mu = torch.tensor(mu0, requires_grad=True)
        log_sd = torch.tensor(math.log(3.0), requires_grad=True)
        opt = torch.optim.Adam([mu, log_sd], lr=0.05)
        for _ in range(steps):
            loss = divergence((-0.5 * ((x - mu) / log_sd.exp()) ** 2)[None, None], teacher_logits, mask, kind)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if best is None or loss.item() < best[0]:
            q = (-0.5 * ((x - mu) / log_sd.exp()) ** 2).softmax(-1).detach()
            best = (loss.item(), q, mu.item(), log_sd.exp().item())
    return best[1:]


def test_reverse_kl_seeks_a_mode_forward_kl_spreads():
    K = 40
    x = torch.arange(K, dtype=torch.float32)
    bimodal = 0.6 * torch.exp(-0.5 * ((x - 10) / 2) ** 2) + 0.4 * torch.exp(-0.5 * ((x - 30) / 2) ** 2)
    teacher = torch.log(bimodal / bimodal.sum())[None, None]
    q_r, mu_r, sd_r = _fit_unimodal(teacher, "rkl")
    q_f, mu_f, sd_f = _fit_unimodal(teacher, "fkl")
    near_mode = lambda q, c: q[max(0, c - 5): c + 6].sum().item()  # noqa: E731
    assert max(near_mode(q_r, 10), near_mode(q_r, 30)) > 0.9  # rkl: almost all mass on one mode
    assert near_mode(q_f, 10) + near_mode(q_f, 30) < 0.75 and q_f[15:26].sum().item() > 0.15  # fkl: the valley
    assert sd_f > 3 * sd_r


@pytest.mark.parametrize("arch", ["opt", "gpt2"])
def test_response_logits_equal_the_full_forward_slice(tokenizer, arch):
    """`response_logits` runs only the response positions through the LM head; values must not change."""
    from takd.models.loading import load_model
    from takd.sampling import _positions, collate_sequences, response_logits

    model = load_model("tiny-s").eval() if arch == "opt" else _gpt2(tokenizer, 5)
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ["a longer prompt here", "hi"]]
    batch = collate_sequences(prompts, [[5, 6, 7], [8]], tokenizer.pad_token_id)
    with torch.no_grad():
        got = response_logits(model, batch)
        attn = batch["attention_mask"]
        full = model(input_ids=batch["input_ids"], attention_mask=attn, position_ids=_positions(attn)).logits
    P, T = int(batch["prompt_len"]), batch["response_ids"].shape[1]
    assert got.shape == (2, T, len(tokenizer))
    assert torch.allclose(got, full[:, P - 1: P - 1 + T], atol=1e-5)


@pytest.mark.parametrize("top_k", [0, 5])
def test_sampler_logprobs_equal_a_fresh_forward(tokenizer, top_k):
    """What `minillm.rescore=false` relies on: the sampler's per-step log-probs are the fresh forward's."""
    from takd.models.loading import load_model
    from takd.sampling import response_logits
    from takd.train.minillm.objective import log_probs, take

    student, teacher = load_model("tiny-s").eval(), load_model("tiny-m").eval()
    ids, mask = _left_padded_prompts(tokenizer, ["What is the capital of Kalomi?", "Sort: 3, 1", "Hi"])
    ro = mixed_sample(student, teacher, ids, mask, alpha=0.3, max_new_tokens=10, top_k=top_k,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      generator=torch.Generator().manual_seed(0), record_logprobs=True)
    batch, m = ro.as_batch(), ro.response_mask
    with torch.no_grad():
        s_logits, t_logits = response_logits(student, batch), response_logits(teacher, batch)
    fresh_q = take(log_probs(process_logits(s_logits, top_k=top_k)), ro.response_ids)
    fresh_p = take(log_probs(t_logits), ro.response_ids)
    # the mixture's teacher is renormalised over the student's rollout-time kept set (reference: its inf_mask)
    fresh_p_mix = take(log_probs(restricted_logits(t_logits, 1.0, ro.kept_ids)), ro.response_ids)
    if top_k:
        assert ro.kept_ids.shape == (*ro.response_ids.shape, top_k)
        m = m & torch.isfinite(ro.student_logprobs)  # a teacher-mixed token outside the kept set: −inf, dropped
        assert torch.equal(torch.isfinite(ro.teacher_mix_logprobs), torch.isfinite(fresh_p_mix))
    else:
        assert ro.kept_ids is None
    assert torch.allclose(ro.student_logprobs[m], fresh_q[m], atol=1e-4)
    assert torch.allclose(ro.teacher_logprobs[m], fresh_p[m], atol=1e-4)
    assert torch.allclose(ro.teacher_mix_logprobs[m], fresh_p_mix[m], atol=1e-4)
    if top_k:  # filtering renormalises over the kept tokens: the mixture's teacher differs from the reward's
        assert not torch.allclose(ro.teacher_mix_logprobs[m], ro.teacher_logprobs[m], atol=1e-3)


def test_keyed_uniforms_are_uniform_and_a_pure_function_of_key_and_step():
    from takd.sampling import row_uniforms

    keys = torch.arange(100_000) + 2**40
    u = row_uniforms(keys, 7)
    assert torch.equal(u, row_uniforms(keys, 7)) and 0.0 <= float(u.min()) and float(u.max()) < 1.0
    # mean 1/2 and variance 1/12 within 5 standard errors; neighbouring keys and steps uncorrelated
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / len(u))
    assert abs(float(u.var()) * 12 - 1.0) < 0.02
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.02
    assert abs(float(torch.corrcoef(torch.stack([u, row_uniforms(keys, 8)]))[0, 1])) < 0.02


def test_inverse_cdf_sampling_follows_the_probabilities_and_never_picks_zero_mass():
    from takd.sampling import inverse_cdf_sample, row_uniforms

    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0]).expand(60_000, 5)
    tokens = inverse_cdf_sample(probs, row_uniforms(torch.arange(60_000), 0))
    freq = torch.bincount(tokens, minlength=5).double() / len(tokens)
    assert freq[1] == 0 and freq[4] == 0
    for k in (0, 2, 3):
        assert abs(float(freq[k]) - float(probs[0, k])) < 5 * math.sqrt(float(probs[0, k]) * 0.9 / len(tokens))
    # hand case: CDF 0.1, 0.1, 0.7, 1.0 -> u = 0.05, 0.1, 0.69, 0.7, 0.99 land in tokens 0, 2, 2, 3, 3
    u = torch.tensor([0.05, 0.1, 0.69, 0.7, 0.99], dtype=torch.float64)
    assert inverse_cdf_sample(probs[:5], u).tolist() == [0, 2, 2, 3, 3]


def test_keyed_sampling_does_not_depend_on_batch_company(tokenizer):
    """A row's sample depends on its key and prompt only: what N ranks draw is what one process draws."""
    from takd.models.loading import load_model

    student, teacher = load_model("tiny-s").eval(), load_model("tiny-m").eval()
    texts = ["What is the capital of Kalomi?", "Sort: 3, 1", "Hi", "Reverse the word: lamp"]
    keys = torch.tensor([11, 12, 13, 14]) + 2**33
    kw = dict(alpha=0.2, max_new_tokens=10, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    ids, mask = _left_padded_prompts(tokenizer, texts)
    together = mixed_sample(student, teacher, ids, mask, row_keys=keys, **kw)
    for halves in ((0, 2), (2, 4)):  # as two ranks would split the batch
        ids_h, mask_h = _left_padded_prompts(tokenizer, texts[halves[0]: halves[1]])
        part = mixed_sample(student, teacher, ids_h, mask_h, row_keys=keys[halves[0]: halves[1]], **kw)
        for i in range(halves[1] - halves[0]):
            row = together.response_ids[halves[0] + i][together.response_mask[halves[0] + i]]
            assert row.tolist() == part.response_ids[i][part.response_mask[i]].tolist()
    other = mixed_sample(student, teacher, ids, mask, row_keys=keys + 100, **kw)
    assert not torch.equal(other.response_ids, together.response_ids)


def test_padded_shard_gives_every_rank_the_same_count():
    from takd.dist import padded_shard

    items = list(range(7))
    shards = [padded_shard(items, r, 3) for r in range(3)]
    assert shards == [([0, 1, 2], 3), ([3, 4, 5], 3), ([6, 6, 6], 1)]
    assert [x for s, n in shards for x in s[:n]] == items
    assert padded_shard([0, 1], 2, 3) == ([1], 0)  # more ranks than items: padding only
    assert padded_shard([], 1, 2) == ([], 0)
