"""The pretraining corpus of MiniLLM's PT loss, in the reference's own format (reference §6): one token stream
(each document + EOS) cut into fixed-size chunks that ignore document boundaries, stored as MMIDIDX shards
`<dir>/train_0.bin/.idx` (`takd.data.mmidx`), read in place by memory map.

The authors' corpora (`MiniLLM/openwebtext-processed`, `MiniLLM/roberta-corpus-processed`, prepared by
`takd.prepare --corpus`) are read as they are; the built-in toy corpus is packed into the same format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from takd.data.mmidx import IndexedSplit, token_dtype, write_shard

IGNORE_INDEX = -100


def pack_corpus(docs: list[str], tokenizer, chunk_tokens: int, out_dir: str | Path) -> Path:
    """Tokenise documents (+EOS each) into one stream, cut into `chunk_tokens` chunks, write `train_0` in out_dir.

    The tail that does not fill a chunk is dropped (reference §6: chunks ignore document boundaries).
    """
    stream: list[int] = []
    for d in docs:
        stream.extend(tokenizer(d, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    n_chunks = len(stream) // chunk_tokens
    if n_chunks == 0:
        raise ValueError(f"corpus has {len(stream)} tokens, fewer than one {chunk_tokens}-token chunk")
    chunks = (stream[i * chunk_tokens: (i + 1) * chunk_tokens] for i in range(n_chunks))
    return write_shard(Path(out_dir) / "train_0", chunks, token_dtype(len(tokenizer)))


class PretrainingCorpus:
    """The chunks of one split; `batch(indices)` gives LM inputs (chunk[:-1]) and labels (chunk[1:]), every position
    trained (reference §6). Chunks of unequal length (not in the authors' corpora) are right-padded, unlabelled."""

    def __init__(self, directory: str | Path, split: str = "train"):
        self.directory = Path(directory)
        self.items = IndexedSplit(directory, split)

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: list[int], pad_id: int = 0) -> dict[str, torch.Tensor]:
        chunks = [np.asarray(self.items[i], dtype=np.int64) for i in indices]
        width = max(len(c) for c in chunks)
        x = torch.full((len(chunks), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunks), width - 1), IGNORE_INDEX, dtype=torch.long)
        for row, c in enumerate(chunks):
            x[row, : len(c)] = torch.from_numpy(c)
            labels[row, : len(c) - 1] = torch.from_numpy(c[1:])
        return {"input_ids": x[:, :-1].contiguous(), "labels": labels}

    def check_vocabulary(self, vocab_size: int, sample_items: int = 1000) -> str | None:
        """Why this corpus was not tokenised for a model of `vocab_size` embedding rows (None when it can be)."""
        top = self.items.max_token(sample_items)
        if top >= vocab_size:
            return f"{self.directory} holds token id {top}, beyond the model's {vocab_size} embeddings: a corpus " \
                   "tokenised for another family"
        return None
