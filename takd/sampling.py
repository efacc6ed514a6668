"""Teacher-mixed sampling on stock transformers, with one KV cache per model (reference §2c).

At every decoding step the student and the teacher each advance one token on their own cache; both
last-position logits go through the same processors (temperature, top-k, top-p); the probabilities are mixed
p̃ = (1 − α)·q + α·p and one token is drawn. α = 0 is pure student sampling (the teacher is not run),
α = 1 pure teacher sampling (the student is not run). The LMOps reference needs a forked `generate` for this;
here it is a ~60-line loop over `model(input_ids, past_key_values=...)`.

Prompts are left-padded; position ids are cumsum(attention_mask) − 1 so GPT-2 (absolute positions from
position_ids) and OPT see the same positions as an unpadded prompt. Rows stop at EOS and are padded after.

Randomness: with `row_keys`, row i's draws come from its own counter-based stream (a hash of its key and the
step), and the token is the inverse CDF of p̃ at that uniform. A sample then depends only on its key and its
prompt, not on the other prompts in its batch or on which rank drew it: the same rollouts on 1 or N processes.
Under ZeRO-3 (`synced`) every rank keeps stepping until every rank's rows have ended, since each forward is a
collective; rows that already ended decode padding, which the response mask removes.

Sampling filters (top-k, top-p): each model's logits go through its own filter for the mixture, as in the reference
fork. What the loss needs is recorded on the *student's* kept set S_t (its filtered support at rollout time,
`kept_ids`): log q(y_t) and the teacher's log-probability renormalised over S_t, both −inf when a teacher-mixed
token fell outside S_t (the reference applies the student's rollout-time mask to both distributions and drops such
positions). The models run in eval mode while decoding (KV caches on, no dropout), whatever mode they were in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from takd import dist
from takd.losses import upcast

_M32 = 0xFFFFFFFF


@dataclass
class Rollout:
    """A batch of sampled responses. B = batch, P = prompt length (left-padded), T = generated steps."""

    prompt_ids: torch.Tensor  # [B, P] long, left-padded
    prompt_mask: torch.Tensor  # [B, P] long, 1 on prompt tokens
    response_ids: torch.Tensor  # [B, T] long, pad after the first EOS
    response_mask: torch.Tensor  # [B, T] bool, true on generated tokens up to and including the first EOS
    # With record_logprobs: log-probabilities of the sampled tokens under each model, at sampling time [B, T]
    student_logprobs: torch.Tensor | None = None  # log q(y_t), sampling processors applied
    teacher_logprobs: torch.Tensor | None = None  # log p(y_t), full vocabulary, no processors (the reward's)
    # log p(y_t) of the teacher after temperature, renormalised over the student's kept set (the mixture's weight)
    teacher_mix_logprobs: torch.Tensor | None = None
    # with a sampling filter: the student's kept token ids at each step, [B, T, K] (rows padded with their first id)
    kept_ids: torch.Tensor | None = None

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def as_batch(self) -> dict[str, torch.Tensor]:
        """Prompt + response as one sequence, in the layout `response_logits` reads."""
        return {"input_ids": torch.cat([self.prompt_ids, self.response_ids], 1),
                "attention_mask": torch.cat([self.prompt_mask, self.response_mask.long()], 1),
                "prompt_len": torch.tensor(self.prompt_ids.shape[1]), "response_ids": self.response_ids,
                "mask": self.response_mask}


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
                   ) -> torch.Tensor:
    """Temperature, then top-k, then nucleus filtering; removed entries become −inf. logits [..., V] (float32)."""
    if temperature == 1.0 and top_k == 0 and top_p >= 1.0:
        return upcast(logits)  # the reference's settings: nothing to do, no copy
    logits = upcast(logits) / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the mass strictly before it already reaches top_p (the top token always stays)
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def is_filtered(temperature: float, top_k: int, top_p: float) -> bool:
    """Any sampling processor at all (temperature included)."""
    return not (temperature == 1.0 and top_k == 0 and top_p >= 1.0)


def restricts(top_k: int, top_p: float) -> bool:
    """A filter that removes tokens from the support (top-k or top-p), so kept sets must be recorded."""
    return top_k > 0 or top_p < 1.0


def restricted_logits(logits: torch.Tensor, temperature: float, kept_ids: torch.Tensor | None) -> torch.Tensor:
    """logits / temperature with every id outside `kept_ids` set to −inf (float32). logits [..., V], kept_ids
    [..., K] (padded with repeats) or None for no restriction."""
    logits = upcast(logits) / temperature if temperature != 1.0 else upcast(logits)
    if kept_ids is None:
        return logits
    keep = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(-1, kept_ids, True)
    return logits.masked_fill(~keep, float("-inf"))


def kept_set(filtered_logits: torch.Tensor) -> torch.Tensor:
    """The ids of the finite entries of filtered logits [B, V] as [B, K] (K = the largest kept count; shorter rows
    padded with their first id): the largest logits are the kept ones, so top-K finds them."""
    counts = torch.isfinite(filtered_logits).sum(-1)
    ids = torch.topk(filtered_logits, int(counts.max()), dim=-1).indices
    pad = torch.arange(ids.shape[-1], device=ids.device)[None] >= counts[:, None]
    return torch.where(pad, ids[:, :1], ids)


@contextlib.contextmanager
def decoding(*models) -> Iterator[None]:
    """Eval mode for the length of a decode (HF turns KV caches off in train mode under gradient checkpointing),
    then each model's previous mode."""
    modes = [(m, m.training) for m in models if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for m, was in modes:
            m.train(was)


def _mul32(x: torch.Tensor, m: int) -> torch.Tensor:
    """(x·m) mod 2³² for 0 ≤ x < 2³², in int64 without overflow (the product is split in 16-bit halves of m)."""
    return (x * (m & 0xFFFF) + (((x * (m >> 16)) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (xorshift-multiply, "lowbias32" constants) on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def stream_keys(seed: int, stream: int, positions) -> torch.Tensor:
    """Per-row sampling keys: (seed, stream) in the high 31 bits, the row's position in its stream in the low 32.
    A stream is one use of sampling (a MiniLLM rollout round, validation, SeqKD data), a position one prompt's place
    in it: the same prompt at the same place draws the same sample whatever batch or rank it lands in."""
    high = (seed * 1_000_003 + stream) % 2**31
    return torch.tensor([high * 2**32 + p for p in positions], dtype=torch.long)


def row_uniforms(row_keys: torch.Tensor, step: int) -> torch.Tensor:
    """A uniform in [0, 1) per row, a pure function of (key, step): u = (27 bits of h(k, 2s) · 2²⁶ + 26 bits of
    h(k, 2s+1)) / 2⁵³. row_keys [B] int64 ≥ 0 -> [B] float64."""
    k = _hash32(_hash32(row_keys & _M32) ^ ((row_keys >> 32) & _M32))
    a = _hash32(k ^ _hash32(torch.full_like(k, 2 * step)))
    b = _hash32(k ^ _hash32(torch.full_like(k, 2 * step + 1)))
    return ((a >> 5) * 2**26 + (b >> 6)).double() / 2**53


def inverse_cdf_sample(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The token whose CDF interval holds u·Σp: index of the first cumulative sum > u·Σp (float64 sums; entries of
    zero probability are never chosen). probs [B, V] ≥ 0, uniforms [B] in [0, 1) -> [B] long."""
    cdf = probs.double().cumsum(-1)
    target = (uniforms * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(probs.shape[-1] - 1)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)


class _Stepper:
    """One model's incremental decoding state: its KV cache and the last-position logits."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.ids, self.mask = input_ids, attention_mask
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                    use_cache=use_cache, logits_to_keep=1)
        self.past = out.past_key_values if use_cache else None
        self.logits = out.logits[:, -1]

    def advance(self, token: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.ids = torch.cat([self.ids, token[:, None]], dim=1)
        if self.use_cache:
            pos = _positions(attention_mask)[:, -1:]
            out = self.model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=pos,
                             past_key_values=self.past, use_cache=True)
            self.past = out.past_key_values
        else:  # naive re-encoding of the whole prefix (benchmark baseline, and the test's oracle)
            out = self.model(input_ids=self.ids, attention_mask=attention_mask,
                             position_ids=_positions(attention_mask), use_cache=False, logits_to_keep=1)
        self.logits = out.logits[:, -1]


@torch.no_grad()
def mixed_sample(student, teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, alpha: float,
                 max_new_tokens: int, eos_token_id: int, pad_token_id: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
                 row_keys: torch.Tensor | None = None, use_cache: bool = True, record_logprobs: bool = False,
                 synced: bool = False) -> Rollout:
    """Sample responses from p̃ = (1 − α)·q_student + α·p_teacher, token by token (see module docstring).

    generator: draws with torch.multinomial (the batch shares one stream); row_keys [B] int64: each row draws from
    its own keyed stream (batch- and rank-invariant). record_logprobs: also return each sampled token's
    log-probability under every model that ran (the same values a fresh forward over prompt + response gives, up
    to float rounding), so scoring needs no second pass. With a sampling filter the student's kept set of every step
    is recorded too. synced: stop only when every rank's rows have ended.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    with decoding(student if alpha < 1.0 else None, teacher if alpha > 0.0 else None):
        return _mixed_sample(student, teacher, input_ids, attention_mask, alpha, max_new_tokens, eos_token_id,
                             pad_token_id, temperature, top_k, top_p, generator, row_keys, use_cache, record_logprobs,
                             synced)


def _mixed_sample(student, teacher, input_ids, attention_mask, alpha, max_new_tokens, eos_token_id, pad_token_id,
                  temperature, top_k, top_p, generator, row_keys, use_cache, record_logprobs, synced) -> Rollout:
    B = input_ids.shape[0]
    mask = attention_mask.long()
    run_student, run_teacher = alpha < 1.0, alpha > 0.0
    s = _Stepper(student, input_ids, mask, use_cache) if run_student else None
    t = _Stepper(teacher, input_ids, mask, use_cache) if run_teacher else None
    tokens, finished = [], torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    filtered = is_filtered(temperature, top_k, top_p)
    recorded: dict[str, list[torch.Tensor]] = {"q": [], "p": [], "p_mix": [], "kept": []}
    for step in range(max_new_tokens):
        s_proc = process_logits(s.logits, temperature, top_k, top_p) if s else None
        log_q = torch.log_softmax(s_proc, -1) if s else None
        log_p_mix = torch.log_softmax(process_logits(t.logits, temperature, top_k, top_p), -1) if t else None
        # p̃ = (1 − α)·q + α·p, built in place: one [B, V] buffer per step
        probs = log_q.exp() if log_q is not None else None
        if log_p_mix is not None:
            probs = log_p_mix.exp() if probs is None else probs.mul_(1.0 - alpha).add_(log_p_mix.exp(), alpha=alpha)
        if row_keys is not None:
            token = inverse_cdf_sample(probs, row_uniforms(row_keys.to(probs.device), step))
        else:
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        tokens.append(token)
        if s is not None and restricts(top_k, top_p):
            recorded["kept"].append(kept_set(s_proc))
        if record_logprobs:
            _record(recorded, token, log_q, t, log_p_mix, temperature, filtered)
        finished = finished | (token == eos_token_id)
        if step == max_new_tokens - 1:
            break
        done = bool(finished.all())
        if dist.all_true(done) if synced else done:
            break
        # Finished rows keep decoding pad tokens (batched forward); what they produce is masked out.
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        for stepper in (s, t):
            if stepper is not None:
                stepper.advance(token, mask)
    response = torch.stack(tokens, dim=1)
    stacked = {k: torch.stack(v, dim=1) if v else None for k, v in recorded.items() if k != "kept"}
    kept = _stack_kept(recorded["kept"]) if recorded["kept"] else None
    return Rollout(input_ids, attention_mask.long(), response, response_mask(response, eos_token_id),
                   stacked["q"], stacked["p"], stacked["p_mix"], kept)


def _record(recorded: dict, token: torch.Tensor, log_q: torch.Tensor | None, t: _Stepper | None,
            log_p_mix: torch.Tensor | None, temperature: float, filtered: bool) -> None:
    """This step's log-probabilities of the drawn tokens: the student's (over its kept set), the teacher's raw one
    (the reward's) and the teacher's renormalised over the student's kept set (the importance weight's)."""
    idx = token[:, None]
    if log_q is not None:
        recorded["q"].append(log_q.gather(-1, idx).squeeze(-1))
    if t is not None:
        raw = torch.log_softmax(upcast(t.logits), -1) if filtered else log_p_mix  # unfiltered: the same values
        recorded["p"].append(raw.gather(-1, idx).squeeze(-1))
        if recorded["kept"]:
            mix = torch.log_softmax(restricted_logits(t.logits, temperature, recorded["kept"][-1]), -1)
        else:
            mix = log_p_mix
        recorded["p_mix"].append(mix.gather(-1, idx).squeeze(-1))


def _stack_kept(per_step: list[torch.Tensor]) -> torch.Tensor:
    """[B, K_t] per step -> [B, T, K] (steps padded with each row's first id)."""
    K = max(k.shape[-1] for k in per_step)
    padded = [torch.cat([k, k[:, :1].expand(-1, K - k.shape[-1])], -1) for k in per_step]
    return torch.stack(padded, dim=1)


def response_mask(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """True on tokens up to and including the first EOS of each row (everything when there is no EOS)."""
    is_eos = response_ids == eos_token_id
    eos_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # an EOS occurred strictly earlier
    return ~eos_before


def pad_right(rows: list[list], value, dtype) -> torch.Tensor:
    T = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (T - len(r)) for r in rows], dtype=dtype)


def collate_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int
                      ) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded responses: one [B, P + T] sequence, mask [B, T]."""
    P = max(len(p) for p in prompts)
    prompt = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    response = pad_right(responses, pad_id, torch.long)
    mask = pad_right([[True] * len(r) for r in responses], False, torch.bool)
    return {"input_ids": torch.cat([prompt, response], 1), "attention_mask": torch.cat([prompt_mask, mask.long()], 1),
            "prompt_len": torch.tensor(P), "response_ids": response, "mask": mask}


def response_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits at the positions that predict each response token: [B, T_resp, V].

    Only the last T_resp + 1 positions go through the LM head (`logits_to_keep`): the prompt's full-vocabulary
    logits are never used, and with a 50k vocabulary the head dominates the cost of a small model's forward.
    """
    attn = batch["attention_mask"]
    T = batch["response_ids"].shape[1]
    logits = model(input_ids=batch["input_ids"], attention_mask=attn, position_ids=_positions(attn),
                   logits_to_keep=T + 1).logits
    # counted from the end: also right for a family whose forward ignores logits_to_keep and returns every position
    # (OPT in transformers 4.56 takes it into **kwargs)
    return logits[:, -(T + 1): -1]


@torch.no_grad()
def student_reverse_kl_sums(student, teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                            max_new_tokens: int, eos_token_id: int, pad_token_id: int, row_keys: torch.Tensor,
                            rows: int | None = None, synced: bool = False) -> dict[str, float]:
    """The student's reverse KL to the teacher on its own samples, as sums over the first `rows` rows.

    Pure-student samples (α = 0) from keyed streams; at every sampled position the exact
    KL(q‖p) = Σ_v q(v) (log q(v) − log p(v)) over the full vocabulary (no sampling estimate). Returns the sum of
    the per-position KL over response tokens (`rkl`), the response tokens (`tokens`), the rows (`rows`) and the rows
    whose response ended with EOS (`ended`): divide for per-token and per-row means after any all-reduce. With
    `teacher` None there is no `rkl`.
    """
    from takd.losses import per_position_divergence

    ro = mixed_sample(student, None, input_ids, attention_mask, alpha=0.0, max_new_tokens=max_new_tokens,
                      eos_token_id=eos_token_id, pad_token_id=pad_token_id, synced=synced, row_keys=row_keys)
    real = input_ids.shape[0] if rows is None else rows
    mask = ro.response_mask[:real]
    ended = ((ro.response_ids[:real] == eos_token_id) & mask).any(-1)
    sums = {"tokens": float(mask.sum()), "rows": float(real), "ended": float(ended.sum())}
    if teacher is not None:  # without a teacher: the samples' length and EOS share only
        batch = ro.as_batch()
        per_token = per_position_divergence(response_logits(student, batch), response_logits(teacher, batch), "rkl")
        sums["rkl"] = float((per_token[:real] * mask).sum())
    return sums


def reverse_kl_over(student, teacher, prompts: list, pad_token_id: int, eos_token_id: int, *, max_new_tokens: int,
                    seed: int, batch_size: int) -> dict[str, float]:
    """`student_reverse_kl_sums` over `prompts` (encoded examples with `prompt_ids`) in batches of `batch_size`,
    one process: prompt i draws from stream (seed, 0) at position i, so the sums do not depend on the batch size.
    Returns the summed `rkl` (with a teacher), `tokens`, `rows`, `ended`."""
    from takd.data.examples import collate_prompts

    totals: dict[str, float] = {}
    with torch.no_grad(), decoding(student, teacher):
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start: start + batch_size]
            p = collate_prompts(chunk, pad_token_id)
            sums = student_reverse_kl_sums(student, teacher, p["input_ids"], p["attention_mask"],
                                           max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                                           pad_token_id=pad_token_id,
                                           row_keys=stream_keys(seed, 0, range(start, start + len(chunk))))
            totals = {k: totals.get(k, 0.0) + v for k, v in sums.items()}
    return totals
