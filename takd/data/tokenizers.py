"""Tokenizers that need no hub download.

- `builtin-bpe`: a byte-level BPE trained on the built-in task's text (deterministic; ~1k tokens), the tiny
  family's tokenizer. Small vocabulary keeps the tiny models' embeddings and softmaxes cheap on a CPU.
- `gpt2-bpe`: the real GPT-2/OPT vocabulary (50257 tokens) built from `vocab.json` + `merges.txt`.
  With transformers 5, `GPT2TokenizerFast(vocab_file=..., merges_file=...)` silently builds an empty
  tokenizer, so we assemble the `tokenizers` pipeline ourselves and wrap it.

Both follow the MiniLLM convention (reference §6): no special tokens are added when encoding, EOS
ends every sequence and doubles as pad.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
BUILTIN_VOCAB_SIZE = 1024  # tokens, incl. 256 byte symbols and EOS


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    wrapped.padding_side = "left"  # prompts are left-padded for generation (reference §3)
    return wrapped


def _byte_level(tok: Tokenizer) -> Tokenizer:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def gpt2_bpe(bpe_dir: str | Path) -> PreTrainedTokenizerFast:
    """The GPT-2 byte-level BPE from its two files ("Hello world" -> [15496, 995])."""
    bpe_dir = Path(bpe_dir)
    model = models.BPE.from_file(str(bpe_dir / "vocab.json"), str(bpe_dir / "merges.txt"))
    return _wrap(_byte_level(Tokenizer(model)))


def train_builtin_bpe(texts: list[str], vocab_size: int = BUILTIN_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (deterministic for the same texts and vocab size)."""
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved beside a model (offline)."""
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # reference §6: pad = EOS for every family
    tok.padding_side = "left"
    return tok
