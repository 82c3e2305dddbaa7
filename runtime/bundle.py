"""The runtime's on-disk model: open one (load); `bundle_writer` writes one. Format: BUNDLE.md.

A bundle is a directory that holds everything needed to run a model and nothing else. Weights
live in two flat files, `dense.bin` (always resident: embedding, attention, norms, routers,
lm_head) and `experts.bin` (one fixed-stride, 4 KiB-aligned record per expert, layer-major),
indexed by name in `manifest.json`. Opening a bundle maps the files; nothing is copied.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import zlib
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .errors import BundleError
from .quant import Q4_0, QuantFormat

FORMAT = "stchat-bundle"
FORMAT_VERSION = 2  # 2: matrices in several formats (manifest "matrices", expert layouts per layer)
READABLE_VERSIONS = (1, 2)  # 1: every matrix Q4_0, one expert layout
ALIGN = 4096
EXPERT_ARRAYS = ("gate", "up", "down")


def _open_direct(path: Path) -> int | None:
    """A descriptor that reads without the page cache, or None (no O_DIRECT here, or a file
    system such as tmpfs that refuses it)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except (AttributeError, OSError):
        return None


def read_buffer(nbytes: int) -> np.ndarray:
    """uint8 [nbytes] on page boundaries, as direct reads need (an anonymous mapping)."""
    return np.frombuffer(mmap.mmap(-1, nbytes), np.uint8)


def array_bytes(specs) -> int:
    """Bytes of the arrays described by `{dtype, shape}` specs (a layout's, or the manifest's)."""
    return sum(int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize for spec in specs)


def layout_key(formats: dict[str, QuantFormat]) -> str:
    """Name of an expert layout: its matrices' formats, e.g. `q4b32-q4b32-q8b16` (gate-up-down)."""
    return "-".join(formats[m].name for m in EXPERT_ARRAYS)


def manifest_expert_layouts(manifest: dict) -> tuple[dict, list[str]]:
    """(layout name -> {formats, arrays, size, graph}, each layer's layout name) of a manifest;
    a format-1 manifest has one layout, every matrix Q4_0, and the graph "expert"."""
    experts = manifest["experts"]
    if "layouts" in experts:
        return experts["layouts"], experts["layers"]
    key = layout_key(dict.fromkeys(EXPERT_ARRAYS, Q4_0))
    layout = {"formats": dict.fromkeys(EXPERT_ARRAYS, Q4_0.name), "arrays": experts["arrays"],
              "size": experts["stride"], "graph": "expert"}
    return {key: layout}, [key] * manifest["config"]["num_layers"]


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Bundle:
    """A converted model opened read-only; arrays are views of memory-mapped files."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise BundleError(f"{self.path}: not a model bundle (no manifest.json)")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BundleError(f"{manifest_path}: unreadable manifest ({error})") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") not in READABLE_VERSIONS:
            raise BundleError(f"{self.path}: bundle format {self.manifest.get('format_version')!r} "
                              f"is not supported (expected {FORMAT_VERSION}); convert the model again")
        for relative, info in self.manifest["files"].items():
            file = self.path / relative
            if not file.is_file() or file.stat().st_size != info["size"]:
                raise BundleError(f"{file}: missing or truncated; convert the model again")
        self.config = ModelConfig.from_dict(self.manifest["config"])
        self._dense = np.memmap(self.path / "dense.bin", dtype=np.uint8, mode="r")
        self._experts = np.memmap(self.path / "experts.bin", dtype=np.uint8, mode="r")
        self._experts_fd = os.open(self.path / "experts.bin", os.O_RDONLY)
        self._experts_direct_fd = _open_direct(self.path / "experts.bin")  # None where unsupported
        self.experts_file_bytes = self._experts.size
        self._dense_fd = os.open(self.path / "dense.bin", os.O_RDONLY)
        experts = self.manifest["experts"]
        self.expert_stride = experts["stride"]
        self.expert_layouts, self.layer_layouts = manifest_expert_layouts(self.manifest)
        self.expert_crc32 = experts.get("crc32")   # None in bundles made before it existed
        self._checked: set[tuple[int, int]] = set()  # experts whose crc32 matched once

    def matrix_format(self, name: str) -> QuantFormat:
        """How a dense matrix (`embed_tokens`, `lm_head`, `layers.0/attn/o_proj`...) is stored."""
        info = self.manifest.get("matrices", {}).get(name)
        return QuantFormat.parse(info["format"]) if info else Q4_0

    def matrix_arrays(self, name: str) -> dict[str, np.ndarray]:
        """{"qweight", "scales"[, "mins"]} views of a dense matrix."""
        fmt = self.matrix_format(name)
        return {suffix: self.tensor(f"{name}.{suffix}") for suffix in fmt.arrays(1, fmt.block)}

    def expert_formats(self, layer: int) -> dict[str, QuantFormat]:
        formats = self.expert_layouts[self.layer_layouts[layer]]["formats"]
        return {matrix: QuantFormat.parse(name) for matrix, name in formats.items()}

    def expert_graph_name(self, layer: int) -> str:
        key = self.layer_layouts[layer]
        return self.expert_layouts[key].get("graph", f"expert.{key}")

    def expert_record_bytes(self, layer: int) -> int:
        """Bytes of one of this layer's expert records that hold data (a read of one expert)."""
        return self.expert_layouts[self.layer_layouts[layer]]["size"]

    @staticmethod
    def _view(buffer: np.ndarray, base: int, spec: dict) -> np.ndarray:
        dtype = np.dtype(spec["dtype"])
        count = int(np.prod(spec["shape"]))
        return buffer[base + spec["offset"]: base + spec["offset"] + count * dtype.itemsize] \
            .view(dtype).reshape(spec["shape"])

    def has_tensor(self, name: str) -> bool:
        return name in self.manifest["tensors"]

    def tensor(self, name: str) -> np.ndarray:
        try:
            return self._view(self._dense, 0, self.manifest["tensors"][name])
        except KeyError:
            raise BundleError(f"{self.path}: tensor {name} missing from the bundle") from None

    def expert_offset(self, layer: int, expert: int) -> int:
        return (layer * self.config.num_experts + expert) * self.expert_stride

    def _expert_arrays(self, layer: int) -> dict:
        return self.expert_layouts[self.layer_layouts[layer]]["arrays"]

    def expert(self, layer: int, expert: int) -> dict[str, np.ndarray]:
        """{'gate.qweight': ..., 'gate.scales': ..., ...} as views of experts.bin."""
        base = self.expert_offset(layer, expert)
        return {name: self._view(self._experts, base, spec) for name, spec in self._expert_arrays(layer).items()}

    def read_expert(self, layer: int, expert: int, buffer: np.ndarray, direct: bool = False) -> dict[str, np.ndarray]:
        """Like `expert`, but read with one pread into `buffer` (uint8 [stride], from
        `read_buffer`), not mapped: the file's pages then never count in this process's resident
        memory. `direct`: bypass the page cache (O_DIRECT) where the file system allows it, for
        a model that does not fit in memory: under a memory cgroup the page cache counts against
        the cap, and buffered reads of experts that are soon evicted cost reclaim and readahead
        (full-size 4B in 1 GiB: decode 0.74 -> 1.05 and 1.04 -> 1.37 tok/s, alternating runs)."""
        size = self.expert_record_bytes(layer)
        fd, length = self._experts_fd, size
        if direct and self._experts_direct_fd is not None:   # whole 4 KiB blocks, within the record's stride
            fd, length = self._experts_direct_fd, -(-size // ALIGN) * ALIGN
        got = os.preadv(fd, [memoryview(buffer[:length])], self.expert_offset(layer, expert))
        if got < size:
            raise BundleError(f"{self.path / 'experts.bin'}: short read for layers.{layer}/experts.{expert}")
        self.check_expert(layer, expert, buffer[:size])
        return {name: self._view(buffer, 0, spec) for name, spec in self._expert_arrays(layer).items()}

    def check_expert(self, layer: int, expert: int, record: np.ndarray) -> None:
        """Compare an expert record just read (uint8 [the layer's record size]) with the crc32
        recorded at conversion: damage on disk is caught when the expert is loaded, not printed
        as garbage text. Once per expert and process: a model that does not fit in memory reads
        the same experts again and again, and each check costs 0.4 ms of CPU per 4B expert
        (benchmarks/EXPERT-CRC.md) that the session builds need."""
        if self.expert_crc32 is None or (layer, expert) in self._checked:
            return
        if zlib.crc32(record) != self.expert_crc32[layer * self.config.num_experts + expert]:
            raise BundleError(f"{self.path / 'experts.bin'}: layers.{layer}/experts.{expert} is damaged (crc32 "
                              f"mismatch); check the model with `stchat verify` and convert it again")
        self._checked.add((layer, expert))

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of a dense tensor ([len(rows), *row shape]), read with pread, not through the
        mapping: a mapped page counts in RSS once touched, and the kernel maps whole folios of
        the page cache around it (128 random embedding rows put 130 MiB of dense.bin in RSS)."""
        spec = self.manifest["tensors"][name]
        dtype, row_shape = np.dtype(spec["dtype"]), tuple(spec["shape"][1:])
        row_bytes = int(np.prod(row_shape)) * dtype.itemsize
        out = np.empty((len(rows), *row_shape), dtype)
        raw = out.view(np.uint8).reshape(len(rows), row_bytes)
        for i, row in enumerate(rows):
            if os.preadv(self._dense_fd, [memoryview(raw[i])], spec["offset"] + int(row) * row_bytes) != row_bytes:
                raise BundleError(f"{self.path / 'dense.bin'}: short read in {name}")
        return out

    def read_tensor(self, name: str) -> np.ndarray:
        """A private copy of a dense tensor (for weights a session prepacks and then drops)."""
        return np.array(self.tensor(name))

    def graph(self, name: str) -> bytes:
        return (self.path / self.manifest["graphs"][name]).read_bytes()

    def text(self, key: str) -> str | None:
        file = self.path / self.manifest[key]
        return file.read_text(encoding="utf-8") if file.is_file() else None

    def release_pages(self) -> None:
        """Drop the mapped pages of dense.bin from this process's resident set. Sessions have
        prepacked their own copies; embedding rows are read with `read_rows`."""
        mapping = getattr(self._dense, "_mmap", None)
        if mapping is not None and hasattr(mapping, "madvise"):
            mapping.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        for attribute in ("_experts_fd", "_experts_direct_fd", "_dense_fd"):
            fd = getattr(self, attribute, -1)
            if fd is not None and fd >= 0:
                os.close(fd)
                setattr(self, attribute, -1)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def verify(self) -> None:
        """Check every file's sha256 against the manifest (a full read of the bundle)."""
        for relative, info in self.manifest["files"].items():
            if sha256_file(self.path / relative) != info["sha256"]:
                raise BundleError(f"{self.path / relative}: sha256 mismatch; the bundle is corrupt")
