"""The runtime's on-disk model: write one (conversion) and open one (load). Format: BUNDLE.md.

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
import time
from pathlib import Path

import numpy as np

from .config import ModelConfig
from .errors import BundleError

FORMAT = "stchat-bundle"
FORMAT_VERSION = 1
ALIGN = 4096
EXPERT_ARRAYS = ("gate", "up", "down")


def _align(offset: int) -> int:
    return (offset + ALIGN - 1) // ALIGN * ALIGN


def expert_layout(cfg: ModelConfig) -> tuple[dict, int]:
    """Offsets of an expert's six arrays inside its record, and the record stride."""
    H, F = cfg.hidden_size, cfg.expert_ffn_size
    shapes = {"gate": (F, H), "up": (F, H), "down": (H, F)}  # [out, in]
    layout, offset = {}, 0
    for matrix in EXPERT_ARRAYS:
        n, k = shapes[matrix]
        for suffix, dtype, shape in (("qweight", "uint8", [n, k // 32, 16]), ("scales", "float32", [n, k // 32])):
            layout[f"{matrix}.{suffix}"] = {"offset": offset, "dtype": dtype, "shape": shape}
            offset = _align(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return layout, offset


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class BundleWriter:
    """Fills a fresh directory; `finish` writes the manifest last, so its presence means complete."""

    def __init__(self, path: Path, config: ModelConfig):
        self.path, self.config = Path(path), config
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "graphs").mkdir(exist_ok=True)
        self.tensors: dict[str, dict] = {}
        self._dense = open(self.path / "dense.bin", "wb")
        self.expert_layout, self.expert_stride = expert_layout(config)
        self._experts = open(self.path / "experts.bin", "wb")
        self._experts.truncate(config.num_layers * config.num_experts * self.expert_stride)
        self._experts_written: set[tuple[int, int]] = set()
        self.graphs: dict[str, str] = {}

    def add_tensor(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        offset = _align(self._dense.tell())
        self._dense.seek(offset)
        self._dense.write(array.tobytes())
        self.tensors[name] = {"offset": offset, "dtype": array.dtype.name, "shape": list(array.shape)}

    def add_q4(self, name: str, qweight: np.ndarray, scales: np.ndarray) -> None:
        self.add_tensor(f"{name}.qweight", qweight)
        self.add_tensor(f"{name}.scales", scales)

    def add_expert(self, layer: int, expert: int, matrices: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """matrices: {"gate"|"up"|"down": (qweight, scales)} in bundle layout."""
        base = (layer * self.config.num_experts + expert) * self.expert_stride
        for matrix, (qweight, scales) in matrices.items():
            for suffix, array in (("qweight", qweight), ("scales", scales)):
                spec = self.expert_layout[f"{matrix}.{suffix}"]
                if list(array.shape) != spec["shape"] or array.dtype.name != spec["dtype"]:
                    raise BundleError(f"layers.{layer}/experts.{expert}/{matrix}.{suffix}: "
                                      f"shape {list(array.shape)} != {spec['shape']}")
                self._experts.seek(base + spec["offset"])
                self._experts.write(np.ascontiguousarray(array).tobytes())
        self._experts_written.add((layer, expert))

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
            "tensors": self.tensors,
            "experts": {"file": "experts.bin", "stride": self.expert_stride, "arrays": self.expert_layout},
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
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
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
        self._dense_fd = os.open(self.path / "dense.bin", os.O_RDONLY)
        self.expert_stride = self.manifest["experts"]["stride"]
        self.expert_arrays_layout = self.manifest["experts"]["arrays"]

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

    def expert(self, layer: int, expert: int) -> dict[str, np.ndarray]:
        """{'gate.qweight': ..., 'gate.scales': ..., ...} as views of experts.bin."""
        base = self.expert_offset(layer, expert)
        return {name: self._view(self._experts, base, spec) for name, spec in self.expert_arrays_layout.items()}

    def read_expert(self, layer: int, expert: int, buffer: np.ndarray) -> dict[str, np.ndarray]:
        """Like `expert`, but read with one pread into `buffer` (uint8 [stride]), not mapped:
        the file's pages then never count in this process's resident memory."""
        got = os.preadv(self._experts_fd, [memoryview(buffer)], self.expert_offset(layer, expert))
        if got != self.expert_stride:
            raise BundleError(f"{self.path / 'experts.bin'}: short read for layers.{layer}/experts.{expert}")
        return {name: self._view(buffer, 0, spec) for name, spec in self.expert_arrays_layout.items()}

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
        for attribute in ("_experts_fd", "_dense_fd"):
            fd = getattr(self, attribute, -1)
            if fd >= 0:
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
