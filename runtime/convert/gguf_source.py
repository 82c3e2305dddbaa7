"""Reads a llama.cpp GGUF file of arch `smallthinker` for conversion.

Every matrix keeps at least the precision the file stores (`quant.from_gguf`: Q4_0 and Q8_0
repacked bit-exactly, K-quants mapped exactly onto 4- or 8-bit formats with their block
scales and mins), unless the user asks for one format (`quantize=`), which may lose
precision and is recorded as such. Routers and norms are read as float32. The tokenizer
is rebuilt from `tokenizer.ggml.*` and the chat template taken from `tokenizer.chat_template`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, quants

from .. import quant
from ..config import ModelConfig
from ..errors import ConversionError
from ..gguf_tokenizer import read_gguf_tokenizer_fields, tokenizer_from_gguf_fields

ARCH = "smallthinker"
EXPERT_TENSORS = {"gate": "ffn_gate_exps", "up": "ffn_up_exps", "down": "ffn_down_exps"}


def gguf_name(name: str) -> str:
    """Bundle name -> llama.cpp tensor name."""
    fixed = {"embed_tokens": "token_embd.weight", "norm": "output_norm.weight", "lm_head": "output.weight"}
    if name in fixed:
        return fixed[name]
    layer, rest = name.split("/", 1)
    suffix = {"input_layernorm": "attn_norm", "attn/q_proj": "attn_q", "attn/k_proj": "attn_k",
              "attn/v_proj": "attn_v", "attn/o_proj": "attn_output",
              "post_attention_layernorm": "ffn_norm", "router": "ffn_gate_inp"}[rest]
    return f"blk.{layer.split('.')[1]}.{suffix}.weight"


class _Truncated(Exception):
    def __init__(self, needed: int):
        self.needed = needed


class _CheckedReader(GGUFReader):
    """GGUFReader that notices a file cut short: its reads past the end otherwise fail with
    numpy reshape errors that do not say what is wrong."""

    def _get(self, offset, dtype, count=1, override_order=None):
        end = int(offset) + int(count) * np.dtype(dtype).itemsize
        if end > len(self.data):
            raise _Truncated(end)
        return super()._get(offset, dtype, count, override_order)


class GGUFSource:
    def __init__(self, path: Path, quantize: quant.QuantFormat | None = None):
        self.path, self.force = path, quantize
        try:
            self.reader = _CheckedReader(path)
        except _Truncated as cut:
            raise ConversionError(f"{path}: truncated GGUF file ({path.stat().st_size} bytes, its contents need "
                                  f"at least {cut.needed}); download or copy it again") from None
        except Exception as error:  # gguf raises ValueError, struct errors, mmap errors...
            raise ConversionError(f"{path}: not a readable GGUF file ({error})") from None
        arch = self._field("general.architecture")
        if arch != ARCH:
            raise ConversionError(f"{path}: GGUF architecture is {arch!r}, not {ARCH!r}")
        self.tensors = {t.name: t for t in self.reader.tensors}
        end = max((int(t.data_offset) + int(t.n_bytes) for t in self.reader.tensors), default=0)
        if end > path.stat().st_size:
            raise ConversionError(f"{path}: truncated ({path.stat().st_size} bytes, tensors need {end})")
        prefix = f"{ARCH}."
        meta = {f.name[len(prefix):]: f.contents() for f in self.reader.fields.values() if f.name.startswith(prefix)}
        self.tokenizer_fields = read_gguf_tokenizer_fields(self.reader)
        tokens = self.tokenizer_fields.get("tokenizer.ggml.tokens") or []
        eos = {self.tokenizer_fields.get(k) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")}
        eos |= {i for i, tok in enumerate(tokens) if tok in ("<|im_end|>", "<|endoftext|>")}
        meta["eos_token_ids"] = sorted(i for i in eos if i is not None)
        meta["bos_token_id"] = self.tokenizer_fields.get("tokenizer.ggml.bos_token_id")
        embd = self._tensor("token_embd.weight")
        self.config = ModelConfig.from_gguf(meta, vocab_size=int(embd.shape[1]))

    def _field(self, key: str):
        field = self.reader.fields.get(key)
        return field.contents() if field is not None else None

    def _tensor(self, name: str):
        try:
            return self.tensors[name]
        except KeyError:
            raise ConversionError(f"{self.path}: tensor {name} is missing") from None

    def _check(self, name: str, tensor, shape: tuple[int, ...]) -> None:
        got = tuple(int(d) for d in reversed(tensor.shape))  # GGUF dims are innermost-first
        if got != shape:
            raise ConversionError(f"{self.path}: tensor {name} has shape {list(got)}, expected {list(shape)}")

    def _convert(self, name: str, data: np.ndarray, qtype: GGMLQuantizationType, rows: int, cols: int):
        try:
            return quant.from_gguf(data, qtype, rows, cols, f"{self.path}: {name}", self.force)
        except ValueError as error:
            raise ConversionError(str(error)) from None

    def matrix_format(self, name: str) -> quant.QuantFormat:
        return quant.target_format(self._tensor(gguf_name(name)).tensor_type, self.force)

    def matrix(self, name: str, rows: int, cols: int) -> tuple:
        """(format, arrays, source type) of a dense matrix."""
        tensor = self._tensor(gguf_name(name))
        self._check(gguf_name(name), tensor, (rows, cols))
        fmt, arrays = self._convert(gguf_name(name), tensor.data, tensor.tensor_type, rows, cols)
        return fmt, arrays, tensor.tensor_type.name

    def vector(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        tensor = self._tensor(gguf_name(name))
        self._check(gguf_name(name), tensor, shape)
        data = tensor.data
        if tensor.tensor_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            data = quants.dequantize(data, tensor.tensor_type)
        return np.asarray(data, dtype=np.float32).reshape(shape)

    def expert_formats(self, layer: int) -> dict[str, quant.QuantFormat]:
        return {m: quant.target_format(self._tensor(f"blk.{layer}.{suffix}.weight").tensor_type, self.force)
                for m, suffix in EXPERT_TENSORS.items()}

    def expert(self, layer: int, expert: int) -> dict:
        cfg = self.config
        out = {}
        for matrix, suffix in EXPERT_TENSORS.items():
            name = f"blk.{layer}.{suffix}.weight"
            tensor = self._tensor(name)
            rows, cols = ((cfg.hidden_size, cfg.expert_ffn_size) if matrix == "down"
                          else (cfg.expert_ffn_size, cfg.hidden_size))
            self._check(name, tensor, (cfg.num_experts, rows, cols))
            out[matrix] = self._convert(f"{name}[{expert}]", tensor.data[expert], tensor.tensor_type, rows, cols)
        return out

    def has_lm_head(self) -> bool:
        return "output.weight" in self.tensors

    def tokenizer_json(self) -> str:
        return tokenizer_from_gguf_fields(self.tokenizer_fields).to_str()

    def chat_template(self) -> str | None:
        return self.tokenizer_fields.get("tokenizer.chat_template")

    def describe(self) -> dict:
        stat = self.path.stat()
        matrices = [t for t in self.reader.tensors if len(t.shape) >= 2 and "ffn_gate_inp" not in t.name]
        types = sorted({t.tensor_type.name for t in matrices})
        exact = all(quant.target_format(t.tensor_type, self.force) == quant.EXACT.get(t.tensor_type) for t in matrices)
        return {"kind": "gguf", "path": str(self.path.resolve()), "name": self.path.name,
                "size": stat.st_size, "mtime": stat.st_mtime, "source_types": types,
                "quantization": quant.LABELS[self.force] if self.force else "as stored", "lossy": not exact}
