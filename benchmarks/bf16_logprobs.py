"""Which log q_old keeps the PPO ratio honest in bf16: the sampler's recorded log-probs or a fresh forward?

    python benchmarks/bf16_logprobs.py [--student DIR --teacher DIR] [--no-record]

One MiniLLM round's first mini-batch (8 teacher-mixed rollouts of ≤ 24 tokens on the built-in prompts), float32 and
bf16 compute (fp32 master weights, autocast), log q_old either recorded by the KV-cached sampler
(`rescore=false`) or from a fresh forward (`rescore=true`), compared with the training forward of the same,
not yet updated, student: mean |Δ log q|, the share of tokens with |Δ| > log 1.2 (outside the PPO clip before any
update) and approx_kl = mean ½Δ². Defaults to the real SmolLM2 pair of scripts/smollm2.py when it is there.
"""

from __future__ import annotations

import argparse
import math

import torch
from _results import record, table_block

from takd.sampling import response_logits, restricted_logits
from takd.train.config import stage_config
from takd.train.minillm import objective as M
from takd.train.minillm.trainer import MiniLLMTrainer


def mismatch(student: str, teacher: str, dtype: str, rescore: bool, out: str) -> dict[str, float]:
    cfg = stage_config("minillm", name="bf16", student=student, teacher=teacher, output_dir=out, max_steps=1,
                       micro_batch_size=8, batch_size=8, max_new_tokens=24, max_prompt_tokens=128, eval_prompts=4,
                       tensorboard=False, dtype=dtype)
    cfg.minillm.num_rollouts, cfg.minillm.rollout_batch_size, cfg.minillm.pt_loss = 8, 8, "none"
    trainer = MiniLLMTrainer(cfg)
    trainer.setup()
    trainer.collector.rescore = rescore  # the trainer forces it on in half precision; measured both ways here
    batch = trainer.micro_batches()[0]
    with torch.no_grad():
        logits = response_logits(trainer.backend.train_forward, batch)
        kept = batch.get("kept_ids")
        fresh = M.take(M.log_probs(restricted_logits(logits, cfg.minillm.sampling.temperature, kept)),
                       batch["response_ids"])
    mask = batch["mask"] & torch.isfinite(fresh)
    delta = (fresh - batch["logq_old"])[mask].double()
    return {"mean_abs": float(delta.abs().mean()), "outside_clip": float((delta.abs() > math.log(1.2)).double().mean()),
            "approx_kl": float((0.5 * delta**2).mean()), "tokens": int(mask.sum())}


def main() -> None:
    import tempfile
    from pathlib import Path

    real = Path.home() / ".cache" / "takd" / "smollm2"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default=str(real / "student") if (real / "student").is_dir() else "tiny-s")
    ap.add_argument("--teacher", default=str(real / "teacher") if (real / "teacher").is_dir() else "tiny-m")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "bfloat16"):
            for rescore in (False, True):
                m = mismatch(args.student, args.teacher, dtype, rescore, f"{tmp}/{dtype}-{rescore}")
                rows.append(f"| {dtype} | {'fresh forward (rescore)' if rescore else 'sampler (recorded)'} | "
                            f"{m['mean_abs']:.2e} | {100 * m['outside_clip']:.1f} % | {m['approx_kl']:.2e} | "
                            f"{m['tokens']} |")
    text = (f"`python benchmarks/bf16_logprobs.py` — student `{Path(args.student).name}`, teacher "
            f"`{Path(args.teacher).name}` ({args.student}); one round's first mini-batch, log q_old against the "
            "training forward of the same student.")
    block = table_block("bf16 rollout log-probs: recorded vs rescored", f"torch {torch.__version__}, CPU autocast",
                        text, ["compute", "log q_old from", "mean abs diff (nats)", "tokens off by > log 1.2",
                               "approx_kl", "tokens"], rows)
    record(block, write=not args.no_record)


if __name__ == "__main__":
    main()
