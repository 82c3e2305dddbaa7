"""The one-token step, bound once: decoding allocates nothing per layer.

Prefill runs chunks of any length through fresh bindings; decoding runs one token through
every layer hundreds of times a reply, so its buffers are preallocated here and every ONNX
Runtime binding is made once: each layer's attention binding per KV cache, each expert
session's binding when the session is built. A step then copies nothing but the residual.

    x[1,1,H] -> router (numpy, fp32)            -> k experts chosen, prefetch
             -> attention binding                -> hidden_out[1,1,H], normed[1,1,H]
             -> expert bindings (normed -> slot) -> expert_outs[k,H]
    x = hidden_out + gates[k] @ expert_outs
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .routing import gate_weights, prefer_resident, top_k


class DecodeBuffers:
    """Model-level buffers of the one-token step and their OrtValue aliases."""

    def __init__(self, hidden: int, num_experts: int, experts_per_tok: int):
        self.x = np.zeros((1, 1, hidden), np.float32)           # residual entering a layer
        self.hidden_out = np.zeros((1, 1, hidden), np.float32)  # after attention
        self.normed = np.zeros((1, 1, hidden), np.float32)      # experts' input
        self.expert_outs = np.zeros((experts_per_tok, hidden), np.float32)  # the chosen experts' outputs
        self.gates = np.zeros(experts_per_tok, np.float32)      # their weights
        self.acc = np.zeros((1, hidden), np.float32)            # weighted sum of experts
        self.router_logits = np.zeros((1, num_experts), np.float32)
        self.seqlens = np.zeros(1, np.int32)                    # total length - 1
        self.total = np.zeros((), np.int32)
        value = ort.OrtValue.ortvalue_from_numpy
        self.x_value, self.hidden_out_value = value(self.x), value(self.hidden_out)
        self.normed_value = value(self.normed)
        self.expert_in_value = value(self.normed.reshape(1, hidden))  # same memory, [T=1, H]
        self.expert_out_values = [value(self.expert_outs[slot:slot + 1]) for slot in range(experts_per_tok)]
        self.seqlens_value, self.total_value = value(self.seqlens), value(self.total)


def bind_cache(binding, model, layer: int, cache) -> None:
    """The inputs every attention call shares: RoPE tables and the layer's KV buffers, which
    are bound as both past and present so attention appends in place."""
    if model.config.rope_layers[layer]:
        binding.bind_ortvalue_input("rope.cos", model._rope_values[0])
        binding.bind_ortvalue_input("rope.sin", model._rope_values[1])
    key, value = cache.key_values[layer], cache.value_values[layer]
    binding.bind_ortvalue_input("past_key", key)
    binding.bind_ortvalue_input("past_value", value)
    binding.bind_ortvalue_output("present_key", key)
    binding.bind_ortvalue_output("present_value", value)


def attention_bindings(model, cache, buffers: DecodeBuffers) -> list:
    """One IOBinding per layer for this cache: inputs, KV in place and outputs all bound."""
    bindings = []
    for layer, session in enumerate(model.attention):
        binding = session.io_binding()
        binding.bind_ortvalue_input("hidden", buffers.x_value)
        binding.bind_ortvalue_input("seqlens_k", buffers.seqlens_value)
        binding.bind_ortvalue_input("total_length", buffers.total_value)
        bind_cache(binding, model, layer, cache)
        binding.bind_ortvalue_output("hidden_out", buffers.hidden_out_value)
        binding.bind_ortvalue_output("normed", buffers.normed_value)
        bindings.append(binding)
    return bindings


def expert_binding(session: ort.InferenceSession, buffers: DecodeBuffers, slot: int):
    """normed -> expert_outs[slot]"""
    binding = session.io_binding()
    binding.bind_ortvalue_input("h", buffers.expert_in_value)
    binding.bind_ortvalue_output("y", buffers.expert_out_values[slot])
    return binding


def decode_step(model, token: int, cache) -> np.ndarray:
    """Append one token to `cache`; returns the final residual [1, H] (a view of a buffer)."""
    cfg, buffers = model.config, model.decode_buffers
    owner, bindings = cache.bindings.get(id(model), (None, None))
    if owner is not model:  # first step of this model on this cache (ids can be reused)
        bindings = attention_bindings(model, cache, buffers)
        cache.bindings[id(model)] = (model, bindings)
    buffers.x[0] = model.embed(np.array([token]))[0]
    buffers.total[...] = cache.length + 1
    buffers.seqlens[0] = cache.length
    k = cfg.num_experts_per_tok
    for layer in range(cfg.num_layers):
        logits = np.matmul(buffers.x[0], model.routers[layer], out=buffers.router_logits)[0]  # [E]
        chosen = top_k(logits, k)
        if model.fast_routing:
            chosen = prefer_resident(logits, chosen, model.experts.resident_mask(layer), model.fast_routing)
        model.experts.prefetch(layer, chosen)
        model.attention[layer].run_with_iobinding(bindings[layer])
        buffers.gates[:] = gate_weights(logits[chosen], cfg.router_softmax)
        for slot, expert in enumerate(chosen.tolist()):
            model.experts.run_bound(layer, expert, buffers, slot)
        np.dot(buffers.gates, buffers.expert_outs, out=buffers.acc[0])  # [k] @ [k, H]
        np.add(buffers.hidden_out[0], buffers.acc, out=buffers.x[0])
    cache.length += 1
    cache.tokens.append(int(token))
    return buffers.x[0]
