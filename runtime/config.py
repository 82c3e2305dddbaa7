"""The model blueprint: every number the forward pass needs, read from either checkpoint kind.

A `ModelConfig` is pure data. It is written into the bundle manifest at conversion and read
back at load; nothing else about the source checkpoint is consulted at run time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from .errors import ConversionError


def _f32(value) -> float:
    """GGUF stores floats as float32 and ONNX attributes are float32: keep one rounding."""
    return float(np.float32(value))


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    num_experts_per_tok: int
    expert_ffn_size: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    router_softmax: bool            # softmax over the top-k logits instead of sigmoid-normalise
    rope_layers: tuple[bool, ...]   # per layer: RoPE (True) or NoPE
    sliding_layers: tuple[bool, ...]  # per layer: sliding-window attention
    sliding_window: int             # keys seen by a sliding layer, current token included; 0 = none
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.rope_layers) != self.num_layers or len(self.sliding_layers) != self.num_layers:
            raise ConversionError("config: rope/sliding layouts must have one entry per layer")
        if self.num_heads % self.num_kv_heads:
            raise ConversionError("config: num_heads must be a multiple of num_kv_heads")
        if any(self.sliding_layers) and self.sliding_window <= 0:
            raise ConversionError("config: sliding layers need a positive sliding window")
        for name in ("hidden_size", "expert_ffn_size"):
            if getattr(self, name) % 32:
                raise ConversionError(f"config: {name} must be a multiple of 32 for Q4_0")

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("rope_layers", "sliding_layers", "eos_token_ids"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for key in ("rope_layers", "sliding_layers", "eos_token_ids"):
            data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def from_hf(cls, cfg: dict) -> "ModelConfig":
        """From a Hugging Face `config.json` of model_type smallthinker."""
        if cfg.get("model_type") != "smallthinker":
            raise ConversionError(
                f"config.json: model_type is {cfg.get('model_type')!r}, not 'smallthinker'")
        try:
            layers = int(cfg["num_hidden_layers"])
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            rope = cfg.get("rope_layout", [1] * layers)
            sliding = cfg.get("sliding_window_layout", [0] * layers)
            eos = cfg.get("eos_token_id", [])
            return cls(
                hidden_size=hidden,
                num_layers=layers,
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads", heads)),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                num_experts=int(cfg["moe_num_primary_experts"]),
                num_experts_per_tok=int(cfg["moe_num_active_primary_experts"]),
                expert_ffn_size=int(cfg["moe_ffn_hidden_size"]),
                vocab_size=int(cfg["vocab_size"]),
                context_length=int(cfg.get("max_position_embeddings", 4096)),
                rope_theta=float(cfg.get("rope_theta", 1e6)),
                rms_norm_eps=_f32(cfg.get("rms_norm_eps", 1e-6)),
                router_softmax=bool(cfg.get("moe_primary_router_apply_softmax", False)),
                rope_layers=tuple(bool(v) for v in rope),
                sliding_layers=tuple(bool(v) for v in sliding),
                sliding_window=int(cfg.get("sliding_window_size") or 0) if any(sliding) else 0,
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                bos_token_id=cfg.get("bos_token_id"),
                eos_token_ids=tuple(eos if isinstance(eos, list) else [eos]),
            )
        except KeyError as missing:
            raise ConversionError(f"config.json: missing key {missing}") from None

    @classmethod
    def from_gguf(cls, meta: dict, vocab_size: int) -> "ModelConfig":
        """From GGUF metadata values (keys without the `smallthinker.` prefix)."""
        try:
            layers = int(meta["block_count"])
            heads = int(meta["attention.head_count"])
            hidden = int(meta["embedding_length"])
            window = int(meta.get("attention.sliding_window", 0) or 0)
            # llama.cpp's layout for SmallThinker: when the file declares a window, layer
            # i % 4 == 0 is global NoPE and the others slide with RoPE.
            sliding = tuple(window > 0 and i % 4 != 0 for i in range(layers))
            rope = tuple(not (window > 0 and i % 4 == 0) for i in range(layers))
            eos = meta.get("eos_token_ids") or []
            return cls(
                hidden_size=hidden,
                num_layers=layers,
                num_heads=heads,
                num_kv_heads=int(meta.get("attention.head_count_kv", heads)),
                head_dim=int(meta.get("attention.key_length", hidden // heads)),
                num_experts=int(meta["expert_count"]),
                num_experts_per_tok=int(meta["expert_used_count"]),
                expert_ffn_size=int(meta["expert_feed_forward_length"]),
                vocab_size=vocab_size,
                context_length=int(meta.get("context_length", 4096)),
                rope_theta=float(meta.get("rope.freq_base", 1e6)),
                rms_norm_eps=_f32(meta.get("attention.layer_norm_rms_epsilon", 1e-6)),
                router_softmax=int(meta.get("expert_gating_func", 2)) == 1,
                rope_layers=rope,
                sliding_layers=sliding,
                sliding_window=window,
                tie_word_embeddings=False,
                bos_token_id=meta.get("bos_token_id"),
                eos_token_ids=tuple(eos),
            )
        except KeyError as missing:
            raise ConversionError(f"GGUF metadata: missing key smallthinker.{missing.args[0]}") from None
