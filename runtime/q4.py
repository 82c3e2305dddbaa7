"""Q4_0 in ONNX Runtime's MatMulNBits layout: quantize, repack GGUF blocks, dequantize rows.

Every quantized matrix in a bundle is a pair:
  qweight uint8   [N, K/32, 16]  byte i = element 2i (low nibble) | element 2i+1 (high nibble)
  scales  float32 [N, K/32]      element = (nibble - 8) * scale
GGUF Q4_0 blocks (18 bytes: fp16 d, then 16 bytes whose byte j holds element j low and j+16
high) map onto it without loss: only the nibble order changes. Float weights are quantized
with the `gguf` package's port of llama.cpp's reference quantizer, so the same floats give the
same bytes whether they arrive in a GGUF file or in safetensors.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, quants

BLOCK = 32
BLOCK_BYTES = 18  # GGUF Q4_0: fp16 scale + 16 bytes of nibbles


def repack_gguf_q4_0(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """GGUF Q4_0 bytes of a [rows, cols] matrix -> (qweight, scales) for MatMulNBits."""
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, cols // BLOCK, BLOCK_BYTES)
    scales = blocks[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)  # [N, K/32]
    qs = blocks[..., 2:]                                                        # [N, K/32, 16]
    elements = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)                   # [N, K/32, 32]
    qweight = (elements[..., 0::2] | (elements[..., 1::2] << 4)).astype(np.uint8)
    return np.ascontiguousarray(qweight), np.ascontiguousarray(scales)


def quantize(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float [N, K] -> (qweight, scales), rounding exactly as llama.cpp's Q4_0 quantizer."""
    rows, cols = weight.shape
    if cols % BLOCK:
        raise ValueError(f"cannot quantize a matrix with {cols} columns: not a multiple of {BLOCK}")
    raw = quants.quantize(np.ascontiguousarray(weight, dtype=np.float32), GGMLQuantizationType.Q4_0)
    return repack_gguf_q4_0(raw, rows, cols)


def dequantize(qweight: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(qweight [N, K/32, 16], scales [N, K/32]) -> float32 [N, K]."""
    low = (qweight & 0x0F).astype(np.int8)
    high = (qweight >> 4).astype(np.int8)
    elements = np.empty(qweight.shape[:-1] + (BLOCK,), dtype=np.int8)  # [N, K/32, 32]
    elements[..., 0::2] = low
    elements[..., 1::2] = high
    values = (elements.astype(np.float32) - 8.0) * scales[..., None]
    return values.reshape(qweight.shape[0], -1)


def nbytes(rows: int, cols: int) -> int:
    """Bytes of one quantized matrix in bundle layout (qweight + float32 scales)."""
    return rows * (cols // BLOCK) * (BLOCK // 2 + 4)
