"""ONNX graph builders: one attention graph per layer, one expert graph, the output head.

Graphs carry no weights. Each initializer is a placeholder marked as external data; the
runtime supplies the real arrays (memory-mapped from the bundle) through
`SessionOptions.add_external_initializers`, which ONNX Runtime treats as constants, so
MatMulNBits prepacks them. Node and initializer names are paths (`layers.3/attn/qkv.qweight`),
the same in the bundle index, the graphs and the logs.
"""
from __future__ import annotations

import math

import onnx
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .config import ModelConfig
from .quant import Q4_0, QuantFormat

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def _placeholder(name: str, dtype: int, dims: list[int]) -> TensorProto:
    """An initializer whose bytes the session receives at creation time."""
    tensor = TensorProto(name=name, data_type=dtype, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "supplied-at-load"
    return tensor


def _inline(name: str, array) -> TensorProto:
    """A small constant stored in the graph itself (shapes, axes)."""
    return numpy_helper.from_array(array, name)


def _matmul(prefix: str, x: str, out: str, n: int, k: int, fmt: QuantFormat, accuracy_level: int):
    """
    y[..., n] = x[..., k] @ W^T, W stored in `fmt` (runtime/quant.py):
      MatMulNBits(x; qweight, scales)                                  zero point 2^(bits-1)
      "m" formats also: - Gemm(ReduceSum(x as [rows, k/block, block]), mins, transB)   the mins
    The block sums are named after `x` and the block, so matmuls of one input share them (`_add`).
    """
    inits = [_placeholder(f"{prefix}.{suffix}", TensorProto.UINT8 if dtype == "uint8" else TensorProto.FLOAT, shape)
             for suffix, (dtype, shape) in fmt.arrays(n, k).items()]
    blocks = k // fmt.block
    inputs = [x, inits[0].name, inits[1].name]
    product = f"{out}.codes" if fmt.mins else out
    nodes = [helper.make_node(
        "MatMulNBits", inputs, [product], name=f"{prefix}/MatMulNBits", domain="com.microsoft",
        K=k, N=n,                       # input width, output width
        bits=fmt.bits, block_size=fmt.block,  # weights sharing one scale
        accuracy_level=accuracy_level,  # 4: int8 activations (fast), 0: fp32 (exact)
    )]
    if fmt.mins:
        shape = _inline(f"block_shape.{blocks}x{fmt.block}", np.array([-1, blocks, fmt.block], np.int64))
        axes = _inline("block_axes", np.array([-1], np.int64))
        inits += [shape, axes]
        sums = f"{x}.block_sums{fmt.block}"
        nodes += [
            helper.make_node("Reshape", [x, shape.name], [f"{x}.blocks{fmt.block}"], name=f"{sums}/Reshape"),
            helper.make_node("ReduceSum", [f"{x}.blocks{fmt.block}", axes.name], [sums],
                             name=f"{sums}/ReduceSum", keepdims=0),            # [rows, k/block]
            helper.make_node("Gemm", [sums, inits[2].name], [f"{prefix}.min_term"],
                             name=f"{prefix}/Gemm", transB=1),                 # [rows, n]
            helper.make_node("Sub", [product, f"{prefix}.min_term"], [out], name=f"{prefix}/Sub"),
        ]
    return nodes, inits


def _rms_norm(prefix: str, x: str, out: str, hidden: int, eps: float):
    weight = _placeholder(f"{prefix}.weight", TensorProto.FLOAT, [hidden])
    node = helper.make_node(
        "SimplifiedLayerNormalization", [x, weight.name], [out], name=f"{prefix}/RMSNorm",
        axis=-1, epsilon=eps,         # x * rsqrt(mean(x^2) + eps) * weight, in fp32
    )
    return node, [weight]


def set_accuracy_level(model_bytes: bytes, level: int) -> bytes:
    """The same graph with every MatMulNBits at another accuracy level (0 = exact, debugging)."""
    model = onnx.load_from_string(model_bytes)
    for node in model.graph.node:
        for attr in node.attribute:
            if node.op_type == "MatMulNBits" and attr.name == "accuracy_level":
                attr.i = level
    return model.SerializeToString()


def _window_cache(sliding: bool) -> dict:
    """A sliding layer's KV buffers hold its window, not the sequence (runtime/kvcache.py)."""
    return {"sliding_window_cache": 1} if sliding else {}


def with_kv_cache(model_bytes: bytes, dtype: str) -> bytes:
    """An attention graph whose KV buffers are of `dtype` ("float16" or "float32") and, on a
    sliding layer, window-sized. Applied at load, so bundles converted before either existed
    run with the current cache layout."""
    model = onnx.load_from_string(model_bytes)
    elem_type = {"float16": TensorProto.FLOAT16, "float32": TensorProto.FLOAT}[dtype]
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name in ("past_key", "past_value", "present_key", "present_value"):
            value.type.tensor_type.elem_type = elem_type
    for node in model.graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        attributes = {attr.name: attr for attr in node.attribute}
        if attributes["local_window_size"].i > 0 and "sliding_window_cache" not in attributes:
            node.attribute.append(helper.make_attribute("sliding_window_cache", 1))
    return model.SerializeToString()


def _model(nodes, inits, inputs, outputs, name: str) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS, producer_name="stchat").SerializeToString()


def _add(nodes: list, inits: list, part) -> None:
    """Append a builder's (node or nodes, initializers) to a graph under construction, less the
    nodes whose outputs the graph already computes and the initializers it already has."""
    built, tensors = part
    made, named = {out for node in nodes for out in node.output}, {t.name for t in inits}
    nodes.extend(node for node in (built if isinstance(built, list) else [built]) if not set(node.output) <= made)
    inits.extend(t for t in tensors if t.name not in named)


def _qkv(p: str, cfg: ModelConfig, formats: dict, accuracy_level: int):
    """attn_in -> qkv [1, S, (nH + 2 nKV) * D]: one matmul when q, k and v share a format (their
    rows stacked as `attn/qkv`), else three (a Q4_0 file may keep k and v in Q8_0) and a Concat."""
    H, D = cfg.hidden_size, cfg.head_dim
    widths = {"q_proj": cfg.num_heads * D, "k_proj": cfg.num_kv_heads * D, "v_proj": cfg.num_kv_heads * D}
    if "qkv" in formats:
        return _matmul(f"{p}/attn/qkv", "attn_in", "qkv", sum(widths.values()), H, formats["qkv"], accuracy_level)
    nodes, inits = [], []
    for name, width in widths.items():
        _add(nodes, inits, _matmul(f"{p}/attn/{name}", "attn_in", name, width, H, formats[name], accuracy_level))
    nodes.append(helper.make_node("Concat", list(widths), ["qkv"], name=f"{p}/attn/Concat", axis=-1))
    return nodes, inits


def attention_graph(cfg: ModelConfig, layer: int, accuracy_level: int = 4, formats: dict | None = None) -> bytes:
    """
    hidden[1,S,H] -> RMSNorm -> qkv matmul(s) -> GroupQueryAttention(kv cache in place)
                  -> o_proj matmul -> + hidden = hidden_out -> RMSNorm -> normed
    `formats`: {"qkv" or "q_proj"/"k_proj"/"v_proj", "o_proj"} -> QuantFormat (default Q4_0).
    """
    formats = formats or {"qkv": Q4_0, "o_proj": Q4_0}
    p = f"layers.{layer}"
    H, D = cfg.hidden_size, cfg.head_dim
    q_width = cfg.num_heads * D
    nodes, inits = [], []
    _add(nodes, inits, _rms_norm(f"{p}/input_layernorm", "hidden", "attn_in", H, cfg.rms_norm_eps))
    _add(nodes, inits, _qkv(p, cfg, formats, accuracy_level))
    rope = cfg.rope_layers[layer]
    gqa_inputs = ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total_length"]
    if rope:
        gqa_inputs += ["rope.cos", "rope.sin"]
    nodes.append(helper.make_node(
        "GroupQueryAttention", gqa_inputs, ["attn", "present_key", "present_value"],
        name=f"{p}/attn/GroupQueryAttention", domain="com.microsoft",
        num_heads=cfg.num_heads, kv_num_heads=cfg.num_kv_heads,
        scale=1.0 / math.sqrt(D),
        do_rotary=int(rope),          # NeoX rotate-half RoPE, or none (NoPE layer)
        rotary_interleaved=0,
        # keys seen including the current token (ORT 1.32 semantics); -1 = all
        local_window_size=cfg.sliding_window if cfg.sliding_layers[layer] else -1,
        **_window_cache(cfg.sliding_layers[layer]),
    ))
    for part in (
        _matmul(f"{p}/attn/o_proj", "attn", "attn_out", H, q_width, formats["o_proj"], accuracy_level),
        (helper.make_node("Add", ["hidden", "attn_out"], ["hidden_out"], name=f"{p}/attn/residual"), []),
        _rms_norm(f"{p}/post_attention_layernorm", "hidden_out", "normed", H, cfg.rms_norm_eps),
    ):
        _add(nodes, inits, part)
    kv_shape = [1, cfg.num_kv_heads, "capacity", D]
    inputs = [
        helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, "S", H]),
        helper.make_tensor_value_info("past_key", TensorProto.FLOAT, kv_shape),
        helper.make_tensor_value_info("past_value", TensorProto.FLOAT, kv_shape),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),         # total - 1
        helper.make_tensor_value_info("total_length", TensorProto.INT32, []),
    ]
    if rope:  # cos/sin tables [positions, D/2], shared by all layers, bound once per session
        inputs += [helper.make_tensor_value_info("rope.cos", TensorProto.FLOAT, ["positions", D // 2]),
                   helper.make_tensor_value_info("rope.sin", TensorProto.FLOAT, ["positions", D // 2])]
    outputs = [
        helper.make_tensor_value_info("hidden_out", TensorProto.FLOAT, [1, "S", H]),
        helper.make_tensor_value_info("normed", TensorProto.FLOAT, [1, "S", H]),
        helper.make_tensor_value_info("present_key", TensorProto.FLOAT, kv_shape),
        helper.make_tensor_value_info("present_value", TensorProto.FLOAT, kv_shape),
    ]
    return _model(nodes, inits, inputs, outputs, f"{p}/attention")


def expert_graph(cfg: ModelConfig, accuracy_level: int = 4, formats: dict | None = None) -> bytes:
    """
    h[T,H] -> gate matmul -> Relu --\
           -> up   matmul ---------- Mul -> down matmul -> y[T,H]     (ReGLU)
    Shared by every expert of the layers whose experts have these `formats` ({"gate", "up",
    "down"} -> QuantFormat, default Q4_0): `expert/gate.qweight`... are supplied per session.
    """
    formats = formats or dict.fromkeys(("gate", "up", "down"), Q4_0)
    H, F = cfg.hidden_size, cfg.expert_ffn_size
    nodes, inits = [], []
    for part in (
        _matmul("expert/gate", "h", "gate", F, H, formats["gate"], accuracy_level),
        (helper.make_node("Relu", ["gate"], ["gate_relu"], name="expert/Relu"), []),
        _matmul("expert/up", "h", "up", F, H, formats["up"], accuracy_level),
        (helper.make_node("Mul", ["up", "gate_relu"], ["act"], name="expert/Mul"), []),
        _matmul("expert/down", "act", "y", H, F, formats["down"], accuracy_level),
    ):
        _add(nodes, inits, part)
    return _model(nodes, inits,
                  [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["T", H])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", H])], "expert")


def head_graph(cfg: ModelConfig, accuracy_level: int = 4, fmt: QuantFormat = Q4_0) -> bytes:
    """x[S,H] -> RMSNorm(model.norm) -> lm_head matmul -> logits[S,V]"""
    H, V = cfg.hidden_size, cfg.vocab_size
    nodes, inits = [], []
    _add(nodes, inits, _rms_norm("norm", "x", "x_normed", H, cfg.rms_norm_eps))
    _add(nodes, inits, _matmul("lm_head", "x_normed", "logits", V, H, fmt, accuracy_level))
    return _model(nodes, inits,
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["S", H])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["S", V])], "head")
