"""Reads a Hugging Face SmallThinker directory (config.json, sharded safetensors) for conversion.

The `safetensors` package's numpy API cannot return bfloat16, the dtype of the released
checkpoints, so tensors are located through the format's JSON header and read from a
memory map: bf16 becomes float32 by a 16-bit shift, which is exact. Every matrix except the
router is quantized with llama.cpp's rounding (`quant.quantize`): to Q4_0 by default, the
format SmallThinker is built to run in, or to Q8_0 when asked (`convert(..., quantize="q8_0")`).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .. import quant
from ..config import ModelConfig
from ..errors import ConversionError

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def hf_name(name: str) -> str:
    """Bundle name -> Hugging Face tensor name."""
    fixed = {"embed_tokens": "model.embed_tokens.weight", "norm": "model.norm.weight", "lm_head": "lm_head.weight"}
    if name in fixed:
        return fixed[name]
    layer, rest = name.split("/", 1)
    suffix = {"input_layernorm": "input_layernorm", "attn/q_proj": "self_attn.q_proj",
              "attn/k_proj": "self_attn.k_proj", "attn/v_proj": "self_attn.v_proj",
              "attn/o_proj": "self_attn.o_proj", "post_attention_layernorm": "post_attention_layernorm",
              "router": "block_sparse_moe.primary_router"}[rest]
    return f"model.{layer}.{suffix}.weight"


class SafetensorsFile:
    """The tensors of one .safetensors file, as lazily read float32 arrays."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        try:
            with open(path, "rb") as handle:
                (header_len,) = struct.unpack("<Q", handle.read(8))
                if header_len > size - 8:
                    raise ValueError("header longer than the file")
                self.header = json.loads(handle.read(header_len))
        except (struct.error, ValueError, UnicodeDecodeError) as error:
            raise ConversionError(f"{path}: not a readable safetensors file ({error})") from None
        self.header.pop("__metadata__", None)
        self.data_start = 8 + header_len
        end = max((info["data_offsets"][1] for info in self.header.values()), default=0)
        if self.data_start + end > size:
            raise ConversionError(f"{path}: truncated ({size} bytes, tensors need {self.data_start + end})")
        self.buffer = np.memmap(path, dtype=np.uint8, mode="r")

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        info = self.header[name]
        if info["dtype"] not in DTYPES:
            raise ConversionError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, stop = info["data_offsets"]
        raw = self.buffer[self.data_start + start: self.data_start + stop].view(DTYPES[info["dtype"]])
        if info["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False).reshape(info["shape"])


class HFSource:
    def __init__(self, path: Path, quantize: quant.QuantFormat | None = None):
        self.path, self.format = path, quantize or quant.Q4_0
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ConversionError(f"{path}: no config.json; not a Hugging Face model directory")
        self.hf_config = json.loads(config_file.read_text(encoding="utf-8"))
        self.config = ModelConfig.from_hf(self.hf_config)
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shard_names = sorted(set(weight_map.values()))
        elif (path / "model.safetensors").is_file():
            shard_names = ["model.safetensors"]
        else:
            raise ConversionError(f"{path}: no model.safetensors or model.safetensors.index.json")
        self.location: dict[str, SafetensorsFile] = {}
        for shard_name in shard_names:
            if not (path / shard_name).is_file():
                raise ConversionError(f"{path / shard_name}: shard listed in the index is missing")
            shard = SafetensorsFile(path / shard_name)
            for tensor in shard.header:
                self.location[tensor] = shard
        if not (path / "tokenizer.json").is_file():
            raise ConversionError(f"{path}: no tokenizer.json")

    def _read(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        shard = self.location.get(name)
        if shard is None:
            raise ConversionError(f"{self.path}: tensor {name} is missing")
        if shard.shape(name) != shape:
            raise ConversionError(f"{self.path}: tensor {name} has shape {list(shard.shape(name))}, expected {list(shape)}")
        return shard.read(name)

    def matrix_format(self, name: str) -> quant.QuantFormat:
        return self.format

    def matrix(self, name: str, rows: int, cols: int) -> tuple:
        """(format, arrays, source dtype) of a dense matrix."""
        name = hf_name(name)
        return self.format, quant.quantize(self._read(name, (rows, cols)), self.format), self.location[name].header[name]["dtype"]

    def vector(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.ascontiguousarray(self._read(hf_name(name), shape), dtype=np.float32)

    def expert_formats(self, layer: int) -> dict[str, quant.QuantFormat]:
        return dict.fromkeys(("gate", "up", "down"), self.format)

    def expert(self, layer: int, expert: int) -> dict:
        H, F = self.config.hidden_size, self.config.expert_ffn_size
        prefix = f"model.layers.{layer}.block_sparse_moe.experts.{expert}"
        return {m: (self.format, quant.quantize(self._read(f"{prefix}.{m}.weight", shape), self.format))
                for m, shape in (("gate", (F, H)), ("up", (F, H)), ("down", (H, F)))}

    def has_lm_head(self) -> bool:
        return "lm_head.weight" in self.location

    def tokenizer_json(self) -> str:
        return (self.path / "tokenizer.json").read_text(encoding="utf-8")

    def chat_template(self) -> str | None:
        standalone = self.path / "chat_template.jinja"
        if standalone.is_file():
            return standalone.read_text(encoding="utf-8")
        config_file = self.path / "tokenizer_config.json"
        if not config_file.is_file():
            return None
        template = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {entry.get("name"): entry.get("template") for entry in template}
            template = named.get("default") or next(iter(named.values()), None)
        return template

    def describe(self) -> dict:
        dtypes = sorted({info["dtype"] for shard in set(self.location.values()) for info in shard.header.values()})
        return {"kind": "hf", "path": str(self.path.resolve()), "name": self.path.name,
                "source_types": dtypes, "quantization": quant.LABELS[self.format],
                "lossy": True}  # a float checkpoint always loses precision: quantized here
