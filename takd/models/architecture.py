"""What a model's `config.json` says about its size (torch-free): dimensions for the memory and time estimates and
its exact parameter count.

The planner must size stages for any directory or cached hub model, not only the registry's, and must not import
torch to do it. The counts below follow the modules transformers builds for each family (weights, biases, norms,
learned positions, an untied LM head) and equal `sum(p.numel() for p in model.parameters())` of the model built on
the meta device (tests/test_model_sizes.py checks every family against transformers). A family not listed gets
12·L·h² + V·h, marked approximate.
"""

from __future__ import annotations

from typing import Any

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")  # RMSNorm, gated MLP, grouped-query attention


def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def dims(cfg: dict[str, Any]) -> dict[str, int]:
    """The `arch` dimensions the estimates use (as in configs/models/*.yaml), from an HF config.json."""
    h = _get(cfg, "hidden_size", "n_embd", "d_model")
    out = {"hidden_size": h, "num_hidden_layers": _get(cfg, "num_hidden_layers", "n_layer"),
           "num_attention_heads": _get(cfg, "num_attention_heads", "n_head"), "vocab_size": cfg.get("vocab_size"),
           "max_positions": _get(cfg, "max_position_embeddings", "n_positions", "max_sequence_length"),
           "intermediate_size": _get(cfg, "intermediate_size", "ffn_dim", "n_inner")}
    heads, kv = out["num_attention_heads"], cfg.get("num_key_value_heads")
    if h and heads and kv and kv != heads:  # grouped-query attention: the KV cache holds kv/heads of h per token
        out["kv_size"] = _get(cfg, "head_dim", default=h // heads) * kv
    return {k: int(v) for k, v in out.items() if isinstance(v, int) and not isinstance(v, bool)}


def parameter_count(cfg: dict[str, Any]) -> tuple[int, bool]:
    """(parameters, exact): the model's parameter count from its config.json; exact for OPT, GPT-2 and the
    LLaMA-like families, else the 12·L·h² + V·h approximation."""
    kind = cfg.get("model_type")
    exact = {"opt": _opt, "gpt2": _gpt2, **{k: _llama_like for k in LLAMA_LIKE}}.get(kind)
    try:
        if exact is not None:
            return exact(cfg), True
    except (KeyError, TypeError):  # a config without the keys transformers writes: approximate
        pass
    d = dims(cfg)
    h, layers, vocab = d.get("hidden_size", 0), d.get("num_hidden_layers", 0), d.get("vocab_size", 0)
    return 12 * layers * h * h + vocab * h, False


def _opt(cfg: dict[str, Any]) -> int:
    h, ffn, vocab = cfg["hidden_size"], cfg["ffn_dim"], cfg["vocab_size"]
    proj = cfg.get("word_embed_proj_dim") or h
    bias = cfg.get("enable_bias", True)
    layer = 4 * (h * h + bias * h) + (h * ffn + bias * ffn) + (ffn * h + bias * h)
    layer += 2 * 2 * h if cfg.get("layer_norm_elementwise_affine", True) else 0
    total = vocab * proj + (cfg["max_position_embeddings"] + 2) * h + cfg["num_hidden_layers"] * layer
    total += 2 * h * proj if proj != h else 0  # project_in / project_out
    if cfg.get("do_layer_norm_before", True) and not cfg.get("_remove_final_layer_norm", False):
        total += 2 * h if cfg.get("layer_norm_elementwise_affine", True) else 0
    return total + (0 if cfg.get("tie_word_embeddings", True) else vocab * proj)


def _gpt2(cfg: dict[str, Any]) -> int:
    h, vocab = cfg["n_embd"], cfg["vocab_size"]
    inner = cfg.get("n_inner") or 4 * h
    layer = 2 * h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (h * inner + inner) + (inner * h + h)
    total = vocab * h + cfg["n_positions"] * h + cfg["n_layer"] * layer + 2 * h
    return total + (0 if cfg.get("tie_word_embeddings", True) else vocab * h)


def _llama_like(cfg: dict[str, Any]) -> int:
    kind = cfg["model_type"]
    h, ffn, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    qkv_bias = kind == "qwen2" or cfg.get("attention_bias", False)
    o_bias = kind != "qwen2" and cfg.get("attention_bias", False)
    attn = h * q + 2 * h * kv + q * h + qkv_bias * (q + 2 * kv) + o_bias * h
    attn += 2 * head_dim if kind == "qwen3" else 0  # q_norm, k_norm
    mlp = 3 * h * ffn + (2 * ffn + h if cfg.get("mlp_bias", False) else 0)  # gate, up, down
    layer = attn + mlp + 2 * h
    total = vocab * h + cfg["num_hidden_layers"] * layer + h
    return total + (0 if cfg.get("tie_word_embeddings", False) else vocab * h)
