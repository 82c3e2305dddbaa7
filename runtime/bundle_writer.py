"""Writing a bundle (conversion): `BundleWriter` lays out dense.bin, experts.bin and the manifest
that `runtime.bundle.Bundle` opens. Kept apart from the reader, which every load imports; only
conversion writes. Format: BUNDLE.md.
"""
from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

import numpy as np

from .bundle import ALIGN, EXPERT_ARRAYS, FORMAT, FORMAT_VERSION, layout_key, sha256_file
from .config import ModelConfig
from .errors import BundleError
from .quant import Q4_0, QuantFormat


def _align(offset: int) -> int:
    return (offset + ALIGN - 1) // ALIGN * ALIGN


def expert_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    H, F = cfg.hidden_size, cfg.expert_ffn_size
    return {"gate": (F, H), "up": (F, H), "down": (H, F)}  # [out, in]


def expert_layout(cfg: ModelConfig, formats: dict[str, QuantFormat]) -> tuple[dict, int]:
    """Offsets of an expert's arrays inside its record, and the bytes the record uses."""
    layout, offset = {}, 0
    for matrix, (n, k) in expert_shapes(cfg).items():
        for suffix, (dtype, shape) in formats[matrix].arrays(n, k).items():
            layout[f"{matrix}.{suffix}"] = {"offset": offset, "dtype": dtype, "shape": shape}
            offset = _align(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return layout, offset


class BundleWriter:
    """Fills a fresh directory; `finish` writes the manifest last, so its presence means complete.
    `expert_formats[layer]` gives that layer's expert matrices' formats (all Q4_0 by default)."""

    def __init__(self, path: Path, config: ModelConfig, expert_formats: list[dict[str, QuantFormat]] | None = None):
        self.path, self.config = Path(path), config
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "graphs").mkdir(exist_ok=True)
        self.tensors: dict[str, dict] = {}
        self.matrices: dict[str, dict] = {}
        self._dense = open(self.path / "dense.bin", "wb")
        expert_formats = expert_formats or [dict.fromkeys(EXPERT_ARRAYS, Q4_0)] * config.num_layers
        self.layer_layouts = [layout_key(f) for f in expert_formats]
        self.layouts = {}
        for formats in expert_formats:
            arrays, size = expert_layout(config, formats)
            self.layouts[layout_key(formats)] = {"formats": {m: f.name for m, f in formats.items()},
                                                 "arrays": arrays, "size": size,
                                                 "graph": f"expert.{layout_key(formats)}"}
        self.expert_stride = max(layout["size"] for layout in self.layouts.values())
        self._experts = open(self.path / "experts.bin", "w+b")   # read back for the crc32s
        self._experts.truncate(config.num_layers * config.num_experts * self.expert_stride)
        self._experts_written: set[tuple[int, int]] = set()
        self._expert_crc32 = [0] * (config.num_layers * config.num_experts)   # layer-major, per record
        self.graphs: dict[str, str] = {}

    def add_tensor(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        offset = _align(self._dense.tell())
        self._dense.seek(offset)
        self._dense.write(array.tobytes())
        self.tensors[name] = {"offset": offset, "dtype": array.dtype.name, "shape": list(array.shape)}

    def add_matrix(self, name: str, fmt: QuantFormat, arrays: dict[str, np.ndarray], source_type: str) -> None:
        """A dense matrix's arrays (`name.qweight`, `name.scales`...) and its format."""
        for suffix, array in arrays.items():
            self.add_tensor(f"{name}.{suffix}", array)
        n, blocks = arrays["scales"].shape
        self.matrices[name] = {"format": fmt.name, "source_type": source_type, "shape": [n, blocks * fmt.block],
                               "bytes": sum(a.nbytes for a in arrays.values())}

    def matrix_format(self, name: str) -> QuantFormat:
        return QuantFormat.parse(self.matrices[name]["format"])

    def add_expert(self, layer: int, expert: int, matrices: dict[str, tuple[QuantFormat, dict[str, np.ndarray]]]) -> None:
        """matrices: {"gate"|"up"|"down": (format, arrays)} in the layer's layout."""
        base = (layer * self.config.num_experts + expert) * self.expert_stride
        layout = self.layouts[self.layer_layouts[layer]]["arrays"]
        for matrix, (fmt, arrays) in matrices.items():
            for suffix, array in arrays.items():
                spec = layout.get(f"{matrix}.{suffix}")
                if spec is None or list(array.shape) != spec["shape"] or array.dtype.name != spec["dtype"]:
                    raise BundleError(f"layers.{layer}/experts.{expert}/{matrix}.{suffix}: {fmt.name} "
                                      f"{list(array.shape)} does not match the layer's layout")
                self._experts.seek(base + spec["offset"])
                self._experts.write(np.ascontiguousarray(array).tobytes())
        self._record_crc32(layer, expert, base)
        self._experts_written.add((layer, expert))

    def _record_crc32(self, layer: int, expert: int, offset: int) -> None:
        """The crc32 of an expert record's bytes as `Bundle.read_expert` will read them (the
        layer's record size), read back from the page cache."""
        self._experts.flush()
        length = self.layouts[self.layer_layouts[layer]]["size"]
        crc = zlib.crc32(os.pread(self._experts.fileno(), length, offset))
        self._expert_crc32[layer * self.config.num_experts + expert] = crc

    def add_graph(self, name: str, model_bytes: bytes) -> None:
        relative = f"graphs/{name}.onnx"
        (self.path / relative).write_bytes(model_bytes)
        self.graphs[name] = relative

    def add_text(self, relative: str, text: str) -> None:
        (self.path / relative).write_text(text, encoding="utf-8")

    def finish(self, source: dict) -> None:
        missing = self.config.num_layers * self.config.num_experts - len(self._experts_written)
        if missing:
            raise BundleError(f"{missing} experts were never written")
        self._dense.close()
        self._experts.close()
        files = {}
        for file in sorted(p for p in self.path.rglob("*") if p.is_file()):
            relative = file.relative_to(self.path).as_posix()
            files[relative] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": self.config.to_dict(), "source": source,
            "tensors": self.tensors, "matrices": self.matrices,
            "experts": {"file": "experts.bin", "stride": self.expert_stride, "layouts": self.layouts,
                        "layers": self.layer_layouts, "crc32": self._expert_crc32},
            "graphs": self.graphs,
            "tokenizer": "tokenizer.json", "chat_template": "chat_template.jinja",
            "files": files,
        }
        tmp = self.path / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, self.path / "manifest.json")

    def abort(self) -> None:
        for handle in (self._dense, self._experts):
            handle.close()
