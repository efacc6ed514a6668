"""Data: instruction rows, tokenised examples and batches, pretraining corpora, the built-in task, tokenizers."""
