"""Megatron "MMIDIDX" indexed token files, the format of MiniLLM's processed data (reference §6), read in place.

A shard is a pair `<prefix>.bin` (every item's tokens, back to back) and `<prefix>.idx`:
  9-byte magic b"MMIDIDX\\x00\\x00", version (uint64, = 1), dtype code (uint8), item count N and document count D
  (uint64 each), then sizes (int32[N], tokens per item), pointers (int64[N], each item's byte offset in .bin) and
  doc_idx (int64[D]); everything little-endian. Token dtype: uint16 for vocabularies under 65,500 tokens, else
  int32; the dtype's maximum (65535 for uint16) separates prompt from response in instruction data.
A split is one or more shards `<split>_0`, `<split>_1`, ... in one directory, indexed as one sequence.

Nothing is copied or converted: the .bin files (tens of GB for the pretraining corpora) are memory-mapped, and an
item is a view into the map until it is batched.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float32, 7: np.float64,
          8: np.uint16, 9: np.uint32}
_HEADER = len(MAGIC) + 8 + 1 + 8 + 8


class NotAnIndex(ValueError):
    """A file that is not an MMIDIDX index (or does not match its .bin)."""


def token_dtype(vocab_size: int) -> type:
    """The reference's choice: uint16 below 65,500 tokens, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def _code(dtype) -> int:
    return next(k for k, v in DTYPES.items() if np.dtype(v) == np.dtype(dtype))


def write_shard(prefix: str | Path, items: Iterable[Iterable[int]], dtype=np.uint16) -> Path:
    """Write items as `<prefix>.bin` + `<prefix>.idx` (one document per item, as the reference's builder does);
    both written under this process's temporary names first, the index last, so a reader never sees half a shard
    (and two processes writing the same shard do not write into one file)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(dtype)
    sizes: list[int] = []
    tmp_bin, tmp_idx = Path(f"{prefix}.bin.{os.getpid()}.tmp"), Path(f"{prefix}.idx.{os.getpid()}.tmp")
    with open(tmp_bin, "wb") as fh:
        for item in items:
            arr = np.asarray(list(item), dtype=dtype)
            fh.write(arr.tobytes(order="C"))
            sizes.append(len(arr))
    size_arr = np.asarray(sizes, dtype=np.int32)
    pointers = np.zeros(len(sizes), dtype=np.int64)
    if sizes:
        pointers[1:] = np.cumsum(size_arr[:-1].astype(np.int64)) * dtype.itemsize
    doc_idx = np.arange(len(sizes) + 1, dtype=np.int64)
    with open(tmp_idx, "wb") as fh:
        fh.write(MAGIC + struct.pack("<Q", VERSION) + struct.pack("<B", _code(dtype)))
        fh.write(struct.pack("<Q", len(sizes)) + struct.pack("<Q", len(doc_idx)))
        fh.write(size_arr.tobytes() + pointers.tobytes() + doc_idx.tobytes())
    tmp_bin.replace(f"{prefix}.bin")
    tmp_idx.replace(f"{prefix}.idx")
    return Path(f"{prefix}.idx")


class Shard:
    """One `.bin`/`.idx` pair, memory-mapped."""

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        idx = Path(f"{prefix}.idx")
        with open(idx, "rb") as fh:
            head = fh.read(_HEADER)
        if len(head) < _HEADER or head[: len(MAGIC)] != MAGIC:
            raise NotAnIndex(f"{idx} is not an MMIDIDX index (no MMIDIDX magic)")
        version, code = struct.unpack("<Q", head[9:17])[0], head[17]
        if version != VERSION or code not in DTYPES:
            raise NotAnIndex(f"{idx}: version {version} / dtype code {code} is not MMIDIDX version 1")
        self.dtype = np.dtype(DTYPES[code])
        n, docs = struct.unpack("<QQ", head[18:34])
        index = np.memmap(idx, mode="r", dtype=np.uint8)
        if index.size < _HEADER + n * 12 + docs * 8:
            raise NotAnIndex(f"{idx} is shorter than its {n} items need (a truncated download?)")
        self.sizes = np.frombuffer(index, dtype=np.int32, count=n, offset=_HEADER)
        self.pointers = np.frombuffer(index, dtype=np.int64, count=n, offset=_HEADER + 4 * n)
        self.doc_idx = np.frombuffer(index, dtype=np.int64, count=docs, offset=_HEADER + 12 * n)
        self.data = np.memmap(Path(f"{prefix}.bin"), mode="r", dtype=np.uint8)
        end = int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize if n else 0
        if self.data.size < end:
            raise NotAnIndex(f"{prefix}.bin holds {self.data.size} bytes, its index points to {end}: a truncated "
                              "download? fetch it again with takd.prepare")

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.frombuffer(self.data, dtype=self.dtype, count=int(self.sizes[i]), offset=int(self.pointers[i]))


def shard_prefixes(directory: str | Path, split: str) -> list[Path]:
    """`<split>_0`, `<split>_1`, ... in `directory`, in order, up to the first one missing (as the reference probes)."""
    out = []
    while (p := Path(directory) / f"{split}_{len(out)}").with_suffix(".idx").is_file() and \
            Path(f"{p}.bin").is_file():
        out.append(p)
    return out


class IndexedSplit:
    """Every shard of one split, indexed as one sequence of items."""

    def __init__(self, directory: str | Path, split: str):
        prefixes = shard_prefixes(directory, split)
        if not prefixes:
            raise FileNotFoundError(f"no {split}_0.bin/.idx in {directory}")
        self.shards = [Shard(p) for p in prefixes]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.dtype = self.shards[0].dtype

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} of {len(self)}")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.shards[k][i - int(self.offsets[k])]

    def item_lengths(self) -> np.ndarray:
        return np.concatenate([s.sizes for s in self.shards])

    def max_token(self, sample_items: int = 1000) -> int:
        """The largest token id among the first `sample_items` items (a vocabulary check that reads little)."""
        return max(int(self[i].max()) for i in range(min(sample_items, len(self)))) if len(self) else 0
