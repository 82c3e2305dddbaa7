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
from onnx import TensorProto, helper

from .config import ModelConfig

OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
BLOCK = 32


def _placeholder(name: str, dtype: int, dims: list[int]) -> TensorProto:
    """An initializer whose bytes the session receives at creation time."""
    tensor = TensorProto(name=name, data_type=dtype, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "supplied-at-load"
    return tensor


def _q4_matmul(prefix: str, x: str, out: str, n: int, k: int, accuracy_level: int):
    """MatMulNBits y[..., n] = x[..., k] @ W^T with W stored as Q4_0 (block 32, zero point 8)."""
    qweight = _placeholder(f"{prefix}.qweight", TensorProto.UINT8, [n, k // BLOCK, BLOCK // 2])
    scales = _placeholder(f"{prefix}.scales", TensorProto.FLOAT, [n, k // BLOCK])
    node = helper.make_node(
        "MatMulNBits", [x, qweight.name, scales.name], [out], name=f"{prefix}/MatMulNBits",
        domain="com.microsoft",
        K=k, N=n,                    # input width, output width
        bits=4, block_size=BLOCK,     # Q4_0: 32 weights share one scale
        accuracy_level=accuracy_level,  # 4: int8 activations (fast), 0: fp32 (exact)
    )
    return node, [qweight, scales]


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


def _model(nodes, inits, inputs, outputs, name: str) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=OPSETS, producer_name="stchat").SerializeToString()


def attention_graph(cfg: ModelConfig, layer: int, accuracy_level: int = 4) -> bytes:
    """
    hidden[1,S,H] -> RMSNorm -> qkv MatMulNBits -> GroupQueryAttention(kv cache in place)
                  -> o_proj MatMulNBits -> + hidden = hidden_out -> RMSNorm -> normed
    """
    p = f"layers.{layer}"
    H, D = cfg.hidden_size, cfg.head_dim
    q_width, qkv_width = cfg.num_heads * D, (cfg.num_heads + 2 * cfg.num_kv_heads) * D
    nodes, inits = [], []
    for node, tensors in (
        _rms_norm(f"{p}/input_layernorm", "hidden", "attn_in", H, cfg.rms_norm_eps),
        _q4_matmul(f"{p}/attn/qkv", "attn_in", "qkv", qkv_width, H, accuracy_level),
    ):
        nodes.append(node)
        inits += tensors
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
    ))
    for node, tensors in (
        _q4_matmul(f"{p}/attn/o_proj", "attn", "attn_out", H, q_width, accuracy_level),
        (helper.make_node("Add", ["hidden", "attn_out"], ["hidden_out"], name=f"{p}/attn/residual"), []),
        _rms_norm(f"{p}/post_attention_layernorm", "hidden_out", "normed", H, cfg.rms_norm_eps),
    ):
        nodes.append(node)
        inits += tensors
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


def expert_graph(cfg: ModelConfig, accuracy_level: int = 4) -> bytes:
    """
    h[T,H] -> gate MatMulNBits -> Relu --\
           -> up   MatMulNBits ---------- Mul -> down MatMulNBits -> y[T,H]     (ReGLU)
    Shared by every expert: the weights named `expert/gate.qweight`... are supplied per session.
    """
    H, F = cfg.hidden_size, cfg.expert_ffn_size
    gate, gate_w = _q4_matmul("expert/gate", "h", "gate", F, H, accuracy_level)
    up, up_w = _q4_matmul("expert/up", "h", "up", F, H, accuracy_level)
    down, down_w = _q4_matmul("expert/down", "act", "y", H, F, accuracy_level)
    nodes = [gate, helper.make_node("Relu", ["gate"], ["gate_relu"], name="expert/Relu"), up,
             helper.make_node("Mul", ["up", "gate_relu"], ["act"], name="expert/Mul"), down]
    return _model(nodes, gate_w + up_w + down_w,
                  [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["T", H])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", H])], "expert")


def head_graph(cfg: ModelConfig, accuracy_level: int = 4) -> bytes:
    """x[S,H] -> RMSNorm(model.norm) -> lm_head MatMulNBits -> logits[S,V]"""
    H, V = cfg.hidden_size, cfg.vocab_size
    norm, norm_w = _rms_norm("norm", "x", "x_normed", H, cfg.rms_norm_eps)
    head, head_w = _q4_matmul("lm_head", "x_normed", "logits", V, H, accuracy_level)
    return _model([norm, head], norm_w + head_w,
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["S", H])],
                  [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["S", V])], "head")
