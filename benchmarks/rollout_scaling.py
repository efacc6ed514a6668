"""Rollout scaling: teacher-mixed sampling time vs response length, KV-cached vs naive re-encoding.

    python benchmarks/rollout_scaling.py [--batch 8] [--prompt 64] [--lengths 64,128,256] [--repeats 3]

Student and teacher are random-init OPT models (the teacher 4x the student's depth x width^2) on the GPT-2
vocabulary size (50272), so the per-step full-vocabulary softmax and mixing are part of the cost. EOS is
disabled so that every row generates exactly T tokens. The cached and naive samplers run interleaved (A/B
alternation within each repeat) so machine noise hits both alike; medians are reported. With KV caches the
cost per new token is ~constant, so time(256)/time(128) should be ≈ 2 (target ≤ 2.2); the naive sampler
re-encodes the whole prefix each step and grows ~quadratically.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import OPTConfig, OPTForCausalLM

from takd.sampling import mixed_sample

HERE = Path(__file__).resolve().parent
VOCAB = 50272


def model(hidden: int, layers: int, seed: int) -> OPTForCausalLM:
    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 32,
                    ffn_dim=4 * hidden, word_embed_proj_dim=hidden, max_position_embeddings=2048, dropout=0.0)
    return OPTForCausalLM(cfg).eval()


def time_once(student, teacher, ids, mask, T: int, use_cache: bool) -> float:
    t0 = time.perf_counter()
    ro = mixed_sample(student, teacher, ids, mask, alpha=0.2, max_new_tokens=T, eos_token_id=-1, pad_token_id=1,
                      generator=torch.Generator().manual_seed(0), use_cache=use_cache)
    assert ro.response_ids.shape[1] == T
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--lengths", default="64,128,256")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-max", type=int, default=256, help="skip the naive sampler above this length")
    args = ap.parse_args()
    torch.set_num_threads(2)
    student, teacher = model(128, 2, 0), model(256, 4, 1)
    ids = torch.randint(3, VOCAB, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    lengths = [int(x) for x in args.lengths.split(",")]
    times: dict[tuple[str, int], list[float]] = {}
    time_once(student, teacher, ids, mask, 8, True)  # warm-up
    for _ in range(args.repeats):
        for T in lengths:
            for kind, cache in (("cached", True), ("naive", False)):
                if kind == "naive" and T > args.naive_max:
                    continue
                times.setdefault((kind, T), []).append(time_once(student, teacher, ids, mask, T, cache))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for T in lengths:
        c = med[("cached", T)]
        n = med.get(("naive", T))
        tok_s = args.batch * T / c
        rows.append(f"| {T} | {c:.2f} | {tok_s:.0f} | {n:.2f} | {n / c:.1f}x |" if n else
                    f"| {T} | {c:.2f} | {tok_s:.0f} | – | – |")
    ratio = med[("cached", lengths[-1])] / med[("cached", lengths[-2])] if len(lengths) > 1 else float("nan")
    naive_ratio = (med[("naive", lengths[-1])] / med[("naive", lengths[-2])]
                   if ("naive", lengths[-1]) in med and len(lengths) > 1 else float("nan"))
    block = "\n".join([
        f"\n## Rollout scaling (teacher-mixed sampling) — {dt.date.today()} — {platform.node()} "
        f"({platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads)",
        f"Command: `python benchmarks/rollout_scaling.py --batch {args.batch} --prompt {args.prompt} "
        f"--lengths {args.lengths} --repeats {args.repeats}`. Student OPT 128x2, teacher OPT 256x4, vocabulary "
        f"{VOCAB}, α = 0.2, batch {args.batch}, prompt {args.prompt} tokens; median of {args.repeats} interleaved "
        "repeats.", "",
        "| new tokens T | cached (s) | cached tokens/s | naive re-encode (s) | naive / cached |",
        "|---|---|---|---|---|", *rows, "",
        f"time({lengths[-1]}) / time({lengths[-2]}): cached **{ratio:.2f}** (target ≤ 2.2), naive {naive_ratio:.2f}.",
        ""])
    print(block)
    print(json.dumps({f"{k}@{T}": v for (k, T), v in med.items()}))
    with open(HERE / "RESULTS.md", "a") as fh:
        fh.write(block)


if __name__ == "__main__":
    main()
