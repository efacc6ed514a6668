"""Run by tests/test_deepspeed.py under torchrun with 2 ranks (not a test module itself).

The model is a ZeRO-3 inference engine, so every forward is a collective. Rank 0's rows end at the first step (its
EOS is the greedy first token), rank 1's never end: with `synced` sampling and `synced_gpus` generation both ranks
must keep stepping together to the end instead of deadlocking. Writes each rank's lengths to <out>/rank<r>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from takd import dist
from takd.data.examples import Example
from takd.evaluate.generation import generate
from takd.models.loading import load_model, load_tokenizer_for
from takd.sampling import mixed_sample
from takd.train import deepspeed_backend as engine
from takd.train.config import DeepSpeedConfig, stage_config


def main(out: Path) -> None:
    engine.init_process_group()
    rank = dist.rank()
    cfg = stage_config(micro_batch_size=2, deepspeed=DeepSpeedConfig(enabled=True, zero_stage=3))
    with engine.partitioned_loading(engine.teacher_config(cfg, 2)):
        model = load_model("tiny-s").requires_grad_(False)
    keep = engine.build_teacher_engine(model, cfg, 2)  # noqa: F841  (the engine owns the gather hooks)
    assert model.model.decoder.layers[0].fc1.weight.numel() == 0  # really partitioned
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]]) if rank == 0 else torch.tensor([[9, 10, 11], [12, 13, 14]])
    mask = torch.ones_like(ids)
    greedy = dict(alpha=0.0, pad_token_id=0, top_k=1, synced=True)
    first = mixed_sample(model, None, ids, mask, max_new_tokens=1, eos_token_id=-1, **greedy)
    eos = int(first.response_ids[0, 0]) if rank == 0 else -1  # rank 0 ends at once, rank 1 never
    ro = mixed_sample(model, None, ids, mask, max_new_tokens=12, eos_token_id=eos, **greedy)

    tok = load_tokenizer_for("tiny-s")
    prompts = [Example([5, 6, 7], [], {})] * (1 if rank == 0 else 2)  # different lengths and batch counts' worth
    texts = generate(model, tok, prompts, seed=rank, max_new_tokens=6 + 10 * rank, batch_size=2, synced_gpus=True)
    (out / f"rank{rank}.json").write_text(json.dumps({"lengths": ro.lengths.tolist(),
                                                      "steps": ro.response_ids.shape[1], "texts": len(texts)}))
    dist.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
