"""Weight formats the runtime computes with, and the lossless mapping of GGUF types onto them.

Every 2-D matrix except the routers is stored for ONNX Runtime's MatMulNBits:
  qweight uint8   [N, K/block, block*bits/8]   codes; 4 bits: byte i = code 2i (low) | 2i+1 (high)
  scales  float32 [N, K/block]
  mins    float32 [N, K/block]                 only in "m" formats
  symmetric formats:  w = (code - 2^(bits-1)) * scale
  "m" formats:        w = (code - 2^(bits-1)) * scale - min   (the graph subtracts
                                                blocksum(x) @ mins^T, see graphs.py)
A format is named `q{bits}b{block}[m]`. Each GGUF type goes to the format that holds it exactly:
  Q4_0 -> q4b32    Q8_0, Q5_0 -> q8b32    Q6_K -> q8b16 (its 16-weight sub-blocks)
  Q4_K, Q4_1 -> q4b32m    Q5_K, Q5_1 -> q8b32m
and anything else (F32/F16/BF16, Q2_K, Q3_K, IQ*) to q8b32 through llama.cpp's Q8_0 rounding:
at least 8 bits, never fewer than the file stored. MatMulNBits runs 8 bits fast only at
accuracy level 4 and has no fast path for float zero points (measured: 18 ms vs 25 us for a
1536x768 matrix), hence the explicit min term. A K-quant's unsigned codes (w = d*q - m) are
stored centred, q - 2^(b-1) for a b-bit source, with the min adjusted to match: the int8
activations then multiply small signed codes, as for Q4_0 (measured on the test files at
accuracy level 4, median error against the exact forward: a Q5_K mix 0.026 -> 0.009, Q4_K_M
0.0058 -> 0.0052, against unsigned codes with zero points of 0). Codes are recovered from each block's own
scales and checked against the `gguf` package's dequantization, so a misread layout fails
the conversion instead of corrupting the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants


@dataclass(frozen=True)
class QuantFormat:
    bits: int    # 4 or 8
    block: int   # weights sharing one scale (and min)
    mins: bool   # a per-block min subtracted too (K-quants), or codes and scales alone

    @property
    def name(self) -> str:
        return f"q{self.bits}b{self.block}{'m' if self.mins else ''}"

    @staticmethod
    def parse(name: str) -> "QuantFormat":
        bits, rest = name[1:].split("b", 1)
        return QuantFormat(int(bits), int(rest.rstrip("m")), rest.endswith("m"))

    def arrays(self, n: int, k: int) -> dict[str, tuple[str, list[int]]]:
        """suffix -> (dtype, shape) of a [n, k] matrix in this format."""
        out = {"qweight": ("uint8", [n, k // self.block, self.block * self.bits // 8]),
               "scales": ("float32", [n, k // self.block])}
        if self.mins:
            out["mins"] = ("float32", [n, k // self.block])
        return out

    def nbytes(self, n: int, k: int) -> int:
        return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for dtype, shape in self.arrays(n, k).values())


Q4_0 = QuantFormat(4, 32, False)
Q8_0 = QuantFormat(8, 32, False)
CHOICES = {"q4_0": Q4_0, "q8_0": Q8_0}  # what --quantize accepts: every matrix forced to one format
LABELS = {Q4_0: "Q4_0", Q8_0: "Q8_0"}   # how a forced format is called where users see it

Matrix = tuple[QuantFormat, dict[str, np.ndarray]]  # format, {"qweight", "scales"[, "mins"]}


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """fp16 field at byte `at` of every block -> float32 [..., nblocks]"""
    return blocks[..., at:at + 2].copy().view(np.float16)[..., 0].astype(np.float32)


def _k_scales_mins(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 12 bytes of 6-bit scales and mins of Q4_K/Q5_K -> two uint8 [..., 8]."""
    s = packed.astype(np.uint8)
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)], axis=-1)
    mn = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], axis=-1)
    return sc, mn


def _block_params(raw: np.ndarray, qtype: T, rows: int) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Per-block scales and mins [rows, K/block] of a GGUF matrix in its target format's blocks,
    and the bits of its codes (w = d*q - m types: q is unsigned)."""
    size = quants.GGML_QUANT_SIZES[qtype][1]
    b = np.asarray(raw, dtype=np.uint8).reshape(rows, -1, size)  # [rows, gguf blocks, bytes]
    if qtype == T.Q5_0:
        return _f16(b, 0), None, 5
    if qtype in (T.Q4_1, T.Q5_1):  # w = d*q + m
        return _f16(b, 0), -_f16(b, 2), 4 if qtype == T.Q4_1 else 5
    if qtype == T.Q6_K:  # 16 int8 scales at byte 192, fp16 d at 208; sub-block j = weights 16j..16j+15
        scales = _f16(b, 208)[..., None] * b[..., 192:208].view(np.int8).astype(np.float32)
        return scales.reshape(rows, -1), None, 6
    if qtype in (T.Q4_K, T.Q5_K):  # d, dmin, 12 bytes of 6-bit scales/mins; sub-block j = 32j..32j+31
        sc, mn = _k_scales_mins(b[..., 4:16])
        scales = _f16(b, 0)[..., None] * sc.astype(np.float32)
        mins = _f16(b, 2)[..., None] * mn.astype(np.float32)
        return scales.reshape(rows, -1), mins.reshape(rows, -1), 4 if qtype == T.Q4_K else 5
    raise ValueError(f"no exact format for {qtype.name}")


def _encode(values: np.ndarray, fmt: QuantFormat, scales: np.ndarray, mins: np.ndarray | None,
            source_bits: int, what: str) -> dict[str, np.ndarray]:
    """Codes of float `values` [N, K] that lie exactly on the grid (scales, mins) -> arrays.
    Unsigned source codes q (w = s*q - m) are stored centred: q - 2^(source_bits-1), with
    min' = m - s * 2^(source_bits-1)."""
    n, zero = values.shape[0], 2 ** (fmt.bits - 1)
    w = values.astype(np.float64).reshape(n, -1, fmt.block)                         # [N, K/B, B]
    s = scales.astype(np.float64)[..., None]
    if fmt.mins:
        centre = 2 ** (source_bits - 1)
        codes = np.divide(w + mins.astype(np.float64)[..., None], s, out=np.zeros_like(w), where=s != 0)
        codes = np.rint(codes) - centre + zero
        mins = (mins.astype(np.float64) - scales.astype(np.float64) * centre).astype(np.float32)
    else:
        codes = np.rint(np.divide(w, s, out=np.zeros_like(w), where=s != 0)) + zero
    if codes.min() < 0 or codes.max() >= 2 ** fmt.bits:
        raise ValueError(f"{what}: codes outside {fmt.bits} bits")
    back = (codes - zero) * s - (mins.astype(np.float64)[..., None] if fmt.mins else 0.0)
    if np.abs(back - w).max() > 1e-5 * max(np.abs(w).max(), 1e-30):
        raise ValueError(f"{what}: weights are not on the grid of their blocks' scales")
    codes = codes.astype(np.uint8)
    qweight = codes if fmt.bits == 8 else codes[..., 0::2] | (codes[..., 1::2] << 4)
    out = {"qweight": np.ascontiguousarray(qweight), "scales": np.ascontiguousarray(scales, dtype=np.float32)}
    if fmt.mins:
        out["mins"] = np.ascontiguousarray(mins)
    return out


def repack_q4_0(raw: np.ndarray, rows: int, cols: int) -> dict[str, np.ndarray]:
    """GGUF Q4_0 (fp16 d, 16 bytes: byte j = element j low, j+16 high) -> q4b32, bit-exact."""
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, cols // 32, 18)
    qs = blocks[..., 2:]                                                        # [N, K/32, 16]
    elements = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)                   # [N, K/32, 32]
    qweight = (elements[..., 0::2] | (elements[..., 1::2] << 4)).astype(np.uint8)
    return {"qweight": np.ascontiguousarray(qweight), "scales": np.ascontiguousarray(_f16(blocks, 0))}


def repack_q8_0(raw: np.ndarray, rows: int, cols: int) -> dict[str, np.ndarray]:
    """GGUF Q8_0 (fp16 d, 32 int8) -> q8b32 (code = value + 128), bit-exact."""
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, cols // 32, 34)
    qweight = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return {"qweight": np.ascontiguousarray(qweight), "scales": np.ascontiguousarray(_f16(blocks, 0))}


def quantize(weight: np.ndarray, fmt: QuantFormat = Q4_0) -> dict[str, np.ndarray]:
    """Float [N, K] -> arrays of `fmt` (q4b32 or q8b32), rounding exactly as llama.cpp does."""
    rows, cols = weight.shape
    if cols % 32:
        raise ValueError(f"cannot quantize a matrix with {cols} columns: not a multiple of 32")
    qtype = {Q4_0: T.Q4_0, Q8_0: T.Q8_0}[fmt]
    raw = quants.quantize(np.ascontiguousarray(weight, dtype=np.float32), qtype)
    return (repack_q4_0 if fmt == Q4_0 else repack_q8_0)(raw, rows, cols)


EXACT = {T.Q4_0: Q4_0, T.Q8_0: Q8_0, T.Q5_0: QuantFormat(8, 32, False), T.Q6_K: QuantFormat(8, 16, False),
         T.Q4_K: QuantFormat(4, 32, True), T.Q4_1: QuantFormat(4, 32, True),
         T.Q5_K: QuantFormat(8, 32, True), T.Q5_1: QuantFormat(8, 32, True)}


def target_format(qtype: T, force: QuantFormat | None = None) -> QuantFormat:
    """The format a GGUF matrix of `qtype` is stored in: `force`, or the one that holds it exactly
    (8-bit Q8_0 rounding for the types no format holds)."""
    return force or EXACT.get(qtype, Q8_0)


def from_gguf(raw: np.ndarray, qtype: T, rows: int, cols: int, what: str = "tensor",
              force: QuantFormat | None = None) -> Matrix:
    """One GGUF matrix [rows, cols] -> arrays in `target_format(qtype, force)`."""
    fmt = target_format(qtype, force)
    if qtype == T.Q4_0 and fmt == Q4_0:
        return fmt, repack_q4_0(raw, rows, cols)
    if qtype == T.Q8_0 and fmt == Q8_0:
        return fmt, repack_q8_0(raw, rows, cols)
    floats = np.asarray(raw, dtype=np.float32) if qtype in (T.F32, T.F16) else quants.dequantize(raw, qtype)
    floats = floats.reshape(rows, cols)
    if fmt == EXACT.get(qtype):
        return fmt, _encode(floats, fmt, *_block_params(raw, qtype, rows), what)
    return fmt, quantize(floats, fmt)


def dequantize(fmt: QuantFormat, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Arrays of one matrix (or some of its rows) -> float32 [N, K]."""
    qweight, scales = arrays["qweight"], arrays["scales"]
    if fmt.bits == 8:
        codes = qweight.astype(np.float32)
    else:
        codes = np.empty(qweight.shape[:-1] + (fmt.block,), np.float32)     # [N, K/B, B]
        codes[..., 0::2] = qweight & 0x0F
        codes[..., 1::2] = qweight >> 4
    values = (codes - 2 ** (fmt.bits - 1)) * scales[..., None]
    if fmt.mins:
        values -= arrays["mins"][..., None]
    return values.reshape(qweight.shape[0], -1)
