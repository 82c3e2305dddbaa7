"""An independent float64 SmallThinker forward pass, written from the model definition alone.

It deliberately shares no code with `runtime/`: tests compare the runtime's logits against it,
so a mistake must not be able to hide in both. Input: weights under the Hugging Face names
(float arrays) and the Hugging Face config.json dict.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize


def dequantized_q4_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights as a Q4_0 runtime sees them: every 2-D matrix but the router goes through
    Q4_0 and back (embedding and lm_head included); norms and routers are unchanged."""
    out = {}
    for name, w in weights.items():
        if w.ndim == 2 and "primary_router" not in name:
            q = quantize(np.asarray(w, dtype=np.float32), GGMLQuantizationType.Q4_0)
            out[name] = dequantize(q, GGMLQuantizationType.Q4_0).reshape(w.shape)
        else:
            out[name] = w
    return out


def _rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """NeoX rotate-half RoPE. x [S, heads, D]; position of row s is s."""
    S, _, D = x.shape
    half = D // 2
    inv_freq = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / D)     # [D/2]
    angle = np.arange(S, dtype=np.float64)[:, None] * inv_freq[None, :]     # [S, D/2]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]         # [S, 1, D/2]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _attention(h, wq, wk, wv, wo, cfg, use_rope: bool, window: int) -> np.ndarray:
    """GQA with a causal mask; window > 0 lets query t see keys t-window+1..t only."""
    S = h.shape[0]
    n_heads, n_kv, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    q = (h @ wq.T).reshape(S, n_heads, D)                                   # [S, nH, D]
    k = (h @ wk.T).reshape(S, n_kv, D)                                      # [S, nKV, D]
    v = (h @ wv.T).reshape(S, n_kv, D)
    if use_rope:
        q, k = _rope(q, cfg["rope_theta"]), _rope(k, cfg["rope_theta"])
    group = n_heads // n_kv
    k = np.repeat(k, group, axis=1)                                         # [S, nH, D]
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(D)                   # [nH, S, S]
    t = np.arange(S)
    allowed = t[None, :] <= t[:, None]                                      # [query, key]
    if window > 0:
        allowed &= t[None, :] > t[:, None] - window
    scores = np.where(allowed[None], scores, -np.inf)
    scores -= scores.max(axis=-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", probs, v).reshape(S, n_heads * D)      # [S, nH*D]
    return out @ wo.T


def _moe(router_in, h, weights, prefix, cfg) -> np.ndarray:
    """Router on the raw layer input; ReGLU experts down(up(h) * relu(gate(h)))."""
    k = cfg["moe_num_active_primary_experts"]
    logits = router_in @ weights[prefix + "primary_router.weight"].astype(np.float64).T  # [S, E]
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]                # [S, k]
    top_logits = np.take_along_axis(logits, top, axis=-1)
    if cfg.get("moe_primary_router_apply_softmax", False):
        gates = np.exp(top_logits - top_logits.max(axis=-1, keepdims=True))
    else:
        gates = 1.0 / (1.0 + np.exp(-top_logits))
    gates /= gates.sum(axis=-1, keepdims=True)                              # [S, k]
    out = np.zeros_like(h)
    for e in np.unique(top):
        rows, rank = np.nonzero(top == e)           # tokens routed to expert e (at most once each)
        p = f"{prefix}experts.{e}."
        x = h[rows]                                                         # [n, H]
        gate = x @ weights[p + "gate.weight"].astype(np.float64).T          # [n, F]
        up = x @ weights[p + "up.weight"].astype(np.float64).T
        down = (up * np.maximum(gate, 0.0)) @ weights[p + "down.weight"].astype(np.float64).T  # [n, H]
        out[rows] += gates[rows, rank][:, None] * down
    return out


def reference_logits(weights: dict[str, np.ndarray], hf_config: dict, token_ids) -> np.ndarray:
    """float32 logits [S, V] for token_ids from an empty context."""
    cfg = hf_config
    n_layers, eps = cfg["num_hidden_layers"], cfg.get("rms_norm_eps", 1e-6)
    rope_layout = cfg.get("rope_layout") or [1] * n_layers
    sliding_layout = cfg.get("sliding_window_layout") or [0] * n_layers
    f64 = lambda name: np.asarray(weights[name], dtype=np.float64)         # noqa: E731
    x = f64("model.embed_tokens.weight")[np.asarray(token_ids)]             # [S, H]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        router_in = x
        h = _rmsnorm(x, f64(p + "input_layernorm.weight"), eps)
        window = (cfg.get("sliding_window_size") or 0) if sliding_layout[i] else 0
        x = x + _attention(h, f64(p + "self_attn.q_proj.weight"), f64(p + "self_attn.k_proj.weight"),
                           f64(p + "self_attn.v_proj.weight"), f64(p + "self_attn.o_proj.weight"),
                           cfg, bool(rope_layout[i]), window)
        h = _rmsnorm(x, f64(p + "post_attention_layernorm.weight"), eps)
        x = x + _moe(router_in, h, weights, p + "block_sparse_moe.", cfg)
    x = _rmsnorm(x, f64("model.norm.weight"), eps)
    head = "lm_head.weight" if "lm_head.weight" in weights else "model.embed_tokens.weight"
    return (x @ f64(head).T).astype(np.float32)


_GGUF_TO_HF = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
              "ffn_gate_inp": "block_sparse_moe.primary_router"}


def gguf_file_weights(path) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF file, dequantized by the `gguf` package, under Hugging Face names."""
    out = {}
    for tensor in GGUFReader(path).tensors:
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float64)
        name = tensor.name.removesuffix(".weight")
        if name == "token_embd":
            out["model.embed_tokens.weight"] = values
        elif name == "output_norm":
            out["model.norm.weight"] = values
        elif name == "output":
            out["lm_head.weight"] = values
        else:
            _, layer, kind = name.split(".")
            prefix = f"model.layers.{layer}."
            if kind.endswith("_exps"):
                for expert, matrix in enumerate(values):
                    out[f"{prefix}block_sparse_moe.experts.{expert}.{kind.split('_')[1]}.weight"] = matrix
            else:
                out[f"{prefix}{_GGUF_TO_HF[kind]}.weight"] = values
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out
