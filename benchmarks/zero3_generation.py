"""ZeRO-3 student decoding: per-layer gathers at every token vs the weights gathered once per batch.

    python -m torch.distributed.run --nproc_per_node=2 benchmarks/zero3_generation.py [--hidden 512] [--layers 8]
        [--batch 4] [--tokens 64] [--repeats 3]

Under ZeRO-3 every forward all-gathers each layer's weights; decoding runs one forward per token, so a rollout
pays layers × tokens all-gathers. `deepspeed.gather_for_generation` (DeepSpeedBackend.generating) gathers the
whole student once per rollout batch and decodes locally. Both modes run interleaved (A/B within each repeat) on
the same keyed random streams, so they must draw identical tokens (asserted); medians are reported, including
the one-off gather. Rank 0 appends a section to benchmarks/RESULTS.md. On CPU the all-gathers go through gloo
over loopback; on GPUs through NCCL (a GPU run is still to be recorded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import OPTConfig, OPTForCausalLM

from takd import dist as distributed
from takd.sampling import mixed_sample
from takd.train.config import DeepSpeedConfig, stage_config
from takd.train.deepspeed_backend import DeepSpeedBackend

HERE = Path(__file__).resolve().parent
VOCAB = 50272


def student_engine(hidden: int, layers: int):
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                    ffn_dim=4 * hidden, word_embed_proj_dim=hidden, max_position_embeddings=2048, dropout=0.0)
    model = OPTForCausalLM(cfg).eval()
    stage = stage_config(micro_batch_size=1, batch_size=distributed.world_size(),
                         deepspeed=DeepSpeedConfig(enabled=True, zero_stage=3))
    backend = DeepSpeedBackend(stage)
    backend.module = model
    backend.prepare(model, total_steps=1)
    return model, backend


def decode(model, backend, ids, mask, tokens: int, gathered: bool) -> tuple[float, torch.Tensor]:
    keys = torch.arange(ids.shape[0]) + 1_000 * distributed.rank()
    backend.cfg.deepspeed.gather_for_generation = gathered
    distributed.barrier()
    t0 = time.perf_counter()
    with backend.generating():
        ro = mixed_sample(model, None, ids, mask, alpha=0.0, max_new_tokens=tokens, eos_token_id=-1, pad_token_id=1,
                          row_keys=keys, synced=True)
    distributed.barrier()
    return time.perf_counter() - t0, ro.response_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    model, eng = student_engine(args.hidden, args.layers)
    n_params = eng.parameter_count()
    rank_gen = torch.Generator().manual_seed(distributed.rank())  # each rank decodes its own prompts
    ids = torch.randint(3, VOCAB, (args.batch, args.prompt), generator=rank_gen)
    mask = torch.ones_like(ids)
    decode(model, eng, ids, mask, 4, True)  # warm-up both paths
    decode(model, eng, ids, mask, 4, False)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        outs = {}
        for gathered in (False, True):
            t, outs[gathered] = decode(model, eng, ids, mask, args.tokens, gathered)
            times[gathered].append(t)
        assert torch.equal(outs[False], outs[True]), "gathered decoding drew different tokens"
    per_layer, once = statistics.median(times[False]), statistics.median(times[True])
    if distributed.rank() == 0:
        block = "\n".join([
            f"\n## ZeRO-3 decoding: per-layer gathers vs gathered once — {dt.date.today()} — {platform.node()} "
            f"({platform.machine()}, torch {torch.__version__}, {distributed.world_size()} ranks, gloo on CPU)",
            f"Command: `python -m torch.distributed.run --nproc_per_node={distributed.world_size()} "
            f"benchmarks/zero3_generation.py --hidden {args.hidden} --layers {args.layers} --batch {args.batch} "
            f"--tokens {args.tokens} --repeats {args.repeats}`. Random-init OPT {args.hidden}x{args.layers} "
            f"({n_params / 1e6:.1f}M params, vocabulary {VOCAB}), student-only sampling, batch {args.batch} per rank, "
            f"{args.prompt}-token prompts, {args.tokens} new tokens; median of {args.repeats} interleaved repeats; "
            "both modes draw identical tokens (asserted).", "",
            "| mode | seconds per rollout batch | tokens/s per rank |", "|---|---|---|",
            f"| per-layer all-gather at every token | {per_layer:.2f} | {args.batch * args.tokens / per_layer:.0f} |",
            f"| gathered once (gather_for_generation) | {once:.2f} | {args.batch * args.tokens / once:.0f} |", "",
            f"Speed-up from gathering once: **{per_layer / once:.2f}x**.", ""])
        print(block)
        with open(HERE / "RESULTS.md", "a") as fh:
            fh.write(block)
    distributed.shutdown()


if __name__ == "__main__":
    main()
