"""Peak memory of one MiniLLM micro-batch's vocabulary losses, whole-tensor vs in chunks of positions (issue #18).

    python benchmarks/vocab_memory.py [--batch 4] [--tokens 256] [--no-record]

What a micro-batch computes from the models' logits: the policy terms (log q_θ of the sampled tokens and the exact
single-step reverse KL to the teacher) on B × T response positions, the PT term (LM + KD) on B × T corpus
positions, and the backward pass into the student's logits. Each configuration runs in a fresh process; its peak
working memory is the peak resident set size minus the resident size once the inputs (student and teacher logits,
float32, the student's from a stand-in LM head) exist, so it counts every float32 [positions × V] intermediate and
the gradient of the student's logits on its way into the head. Model forwards are excluded: they are the same in
both. Vocabularies: OPT's 50,272 and LLaMA-3's 128,256.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch
from _results import record, table_block

VOCABS = (50_272, 128_256)
HIDDEN = 64  # the stand-in LM head's input size


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(vocab: int, batch: int, tokens: int, chunk: int | None) -> dict[str, float]:
    from takd.train.minillm import objective as M

    g = torch.Generator().manual_seed(0)
    # the student's logits come out of an LM head, as in a model: their gradient is consumed by the head's backward
    # and freed, not kept as a leaf's .grad (a small hidden size keeps the head's own cost out of the measurement)
    head = (0.1 * torch.randn(vocab, HIDDEN, generator=g)).requires_grad_(True)
    student = torch.randn(batch, tokens + 1, HIDDEN, generator=g) @ head.T
    pt_student = torch.randn(batch, tokens, HIDDEN, generator=g) @ head.T
    teacher = torch.randn(batch, tokens + 1, vocab, generator=g)
    pt_teacher = torch.randn(batch, tokens, vocab, generator=g)
    sampled = torch.randint(0, vocab, (batch, tokens), generator=g)
    advantages = torch.randn(batch, tokens, generator=g)
    base = peak_rss_mb()
    logq, single_step = M.policy_token_terms(student[:, :tokens], teacher[:, :tokens], sampled,
                                             chunk_positions=chunk)
    loss = -(advantages * logq).mean() + single_step.mean()
    loss = loss + M.pt_loss(pt_student, pt_teacher, sampled, 0.5, "lm+kd", chunk_positions=chunk)
    loss.backward()
    return {"working_mb": peak_rss_mb() - base, "loss": float(loss)}


def run(vocab: int, batch: int, tokens: int, chunk: int | None) -> dict[str, float]:
    # large blocks always mmapped (a fixed threshold): freed memory leaves the resident set at once, so the peak RSS
    # is the peak of live tensors, not glibc's heap high-water mark
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    done = subprocess.run([sys.executable, __file__, "--worker", str(vocab), str(batch), str(tokens), str(chunk or 0)],
                          capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--worker", nargs=4, type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        vocab, batch, tokens, chunk = args.worker
        print(json.dumps(worker(vocab, batch, tokens, chunk or None)))
        return
    from takd.losses import AUTO, CHUNK_ELEMENTS

    rows = []
    for vocab in VOCABS:
        whole, parts = (run(vocab, args.batch, args.tokens, c) for c in (None, AUTO))
        tensor_mb = args.batch * args.tokens * vocab * 4 / 2**20
        rows.append(f"| {vocab:,} | {tensor_mb:,.0f} | {whole['working_mb']:,.0f} | {parts['working_mb']:,.0f} | "
                    f"{parts['working_mb'] / whole['working_mb']:.2f}× | {abs(whole['loss'] - parts['loss']):.1e} |")
    text = (f"`python benchmarks/vocab_memory.py` — B = {args.batch} sequences × T = {args.tokens} response tokens "
            "(policy terms + single-step reverse KL) and as many PT positions (LM + KD), forward and backward from "
            f"the logits (the student's out of a stand-in LM head); chunks of {CHUNK_ELEMENTS:,} elements per "
            "[positions × V] tensor. Working memory = peak RSS − RSS with the inputs allocated; it includes the "
            "gradient of the student's logits on its way into the head (one [B × T × V] float32 tensor, two while "
            "autograd un-slices the response positions), which no chunking removes.")
    block = table_block("Vocabulary losses in chunks: peak memory of one MiniLLM micro-batch",
                        f"torch {torch.__version__}, CPU", text,
                        ["vocabulary", "one [B×T×V] float32 (MB)", "whole tensors (MB)", "in chunks (MB)", "ratio",
                         "loss difference"], rows)
    record(block, write=not args.no_record)


if __name__ == "__main__":
    main()
