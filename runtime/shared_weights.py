"""MatMulNBits weights handed to ONNX Runtime without the copy it makes of external initializers.

Weights given with `SessionOptions.add_external_initializers` are copied into buffers of the
session's own before MatMulNBits prepacks them, and the copies of the scales are kept for the
session's life although, at accuracy level 4, nothing reads them again. Measured on a full-size
4B expert (ONNX Runtime 1.32): 4.7 MiB of fresh pages faulted in per build for 2.1 MiB of
weights, 3.04 MiB resident per session (1.44x). Given with `add_initializer` instead (ONNX
Runtime's shared initializers, which it uses in place), the same build faults in 2.6 MiB, takes
a fifth less time, and the session holds its prepacked copy alone (1.24x).

`add_initializer` replaces an initializer the graph declares, so `share` rewrites the bundle's
external-data placeholders of MatMulNBits weights into empty tensors of the same name (ONNX
Runtime checks embedded data against the declared shape, not against the replacement).
`roles` says which of them the session reads at run time, so `sessions.make_session` gives
those a copy of their own and lets callers reuse the buffers of the rest (measured by
overwriting the buffers after the build; `tests/test_shared_weights.py` checks it):
- accuracy level 4, 4 and 8 bits: codes and scales are both prepacked, never read again;
- other levels: 4-bit codes are prepacked, the scales are read at every call (8-bit: both kept).
"""
from __future__ import annotations

import functools

import onnx
from onnx import TensorProto

CONSUMED, READ = "consumed by prepacking", "read at run time"


def share(model_bytes: bytes) -> bytes:
    """The graph with its MatMulNBits weight placeholders turned into shared-initializer slots."""
    model = onnx.load_from_string(model_bytes)
    weight_names = {name for node in model.graph.node if node.op_type == "MatMulNBits" for name in node.input[1:3]}
    changed = False
    for index, init in enumerate(model.graph.initializer):
        if init.name in weight_names and init.data_location == TensorProto.EXTERNAL:
            model.graph.initializer[index].CopyFrom(TensorProto(name=init.name, data_type=init.data_type, dims=[0]))
            changed = True
    return model.SerializeToString() if changed else model_bytes


@functools.lru_cache(maxsize=256)
def roles(model_bytes: bytes) -> dict[str, str]:
    """name -> CONSUMED or READ, for each shared-initializer slot of the graph."""
    model = onnx.load_from_string(model_bytes)
    slots = {init.name for init in model.graph.initializer if _is_slot(init)}
    out = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attributes = {attr.name: attr.i for attr in node.attribute}
        level, bits = attributes.get("accuracy_level", 0), attributes.get("bits", 4)
        codes, scales = node.input[1], node.input[2]
        if codes in slots:
            out[codes] = CONSUMED if level == 4 or bits == 4 else READ
        if scales in slots:
            out[scales] = CONSUMED if level == 4 else READ
    return out


def _is_slot(init: TensorProto) -> bool:
    return list(init.dims) == [0] and init.data_location != TensorProto.EXTERNAL and not init.raw_data


def placeholder_names(model_bytes: bytes) -> list[str]:
    """Every weight the graph expects to be supplied: external placeholders and shared slots."""
    model = onnx.load_from_string(model_bytes)
    return [init.name for init in model.graph.initializer
            if init.data_location == TensorProto.EXTERNAL or _is_slot(init)]
