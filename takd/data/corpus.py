"""The pretraining corpus of MiniLLM's PT loss: one token stream (each document + EOS) cut into fixed-size chunks
that ignore document boundaries (reference §6), stored as a flat memory-mapped `uint16`/`int32` numpy file
(`<name>.bin` + `<name>.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def pack_corpus(docs: list[str], tokenizer, chunk_tokens: int, out_prefix: str | Path) -> Path:
    """Tokenise documents (+EOS each) into one stream, cut into `chunk_tokens` chunks, save as mmap numpy.

    The tail that does not fill a chunk is dropped (reference §6: chunks ignore document boundaries).
    """
    stream: list[int] = []
    for d in docs:
        stream.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    n_chunks = len(stream) // chunk_tokens
    if n_chunks == 0:
        raise ValueError(f"corpus has {len(stream)} tokens, fewer than one {chunk_tokens}-token chunk")
    dtype = np.uint16 if len(tokenizer) < 65500 else np.int32
    arr = np.asarray(stream[: n_chunks * chunk_tokens], dtype=dtype).reshape(n_chunks, chunk_tokens)
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_prefix.with_suffix(".bin.tmp")
    arr.tofile(tmp)
    tmp.replace(out_prefix.with_suffix(".bin"))
    meta = {"chunks": n_chunks, "chunk_tokens": chunk_tokens, "dtype": np.dtype(dtype).name}
    out_prefix.with_suffix(".json").write_text(json.dumps(meta))
    return out_prefix.with_suffix(".bin")


class PackedCorpus:
    """Memory-mapped fixed-size chunks; `batch(indices)` gives LM inputs (chunk[:-1]) and labels (chunk[1:])."""

    def __init__(self, prefix: str | Path):
        prefix = Path(prefix)
        meta = json.loads(prefix.with_suffix(".json").read_text())
        self.chunks = np.memmap(prefix.with_suffix(".bin"), dtype=meta["dtype"], mode="r",
                                shape=(meta["chunks"], meta["chunk_tokens"]))

    def __len__(self) -> int:
        return self.chunks.shape[0]

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.asarray(self.chunks[indices], dtype=np.int64))
        return {"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()}
