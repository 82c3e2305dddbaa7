"""`convert(source, dest)`: a GGUF file or a Hugging Face directory -> a runtime bundle.

Both source readers present the same small interface (config, quantized matrices, float
vectors, experts, tokenizer, chat template); this module walks it in bundle order. The bundle
is written into a hidden sibling directory and renamed into place only once complete, so an
interrupted or failed conversion leaves no bundle behind.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from .. import graphs
from ..bundle_writer import BundleWriter
from ..errors import ConversionError, StchatRuntimeError
from ..quant import CHOICES, QuantFormat
from .gguf_source import GGUFSource
from .hf_source import HFSource

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def open_source(source: Path, quantize: QuantFormat | None = None):
    if source.is_dir():
        return HFSource(source, quantize)
    if source.is_file():
        return GGUFSource(source, quantize)
    raise ConversionError(f"{source}: no such file or directory")


def _write(src, dest: Path, progress: Progress) -> None:
    # "tied" in a bundle means what the runtime does: no lm_head, the embedding serves
    cfg = replace(src.config, tie_word_embeddings=not src.has_lm_head())
    expert_formats = [src.expert_formats(layer) for layer in range(cfg.num_layers)]
    writer = BundleWriter(dest, cfg, expert_formats)

    def matrix(name: str, rows: int, cols: int, stored_as: str | None = None):
        fmt, arrays, source_type = src.matrix(name, rows, cols)
        writer.add_matrix(stored_as or name, fmt, arrays, source_type)
        return fmt

    try:
        matrix("embed_tokens", cfg.vocab_size, cfg.hidden_size)
        widths = {"q_proj": cfg.num_heads * cfg.head_dim, "k_proj": cfg.num_kv_heads * cfg.head_dim,
                  "v_proj": cfg.num_kv_heads * cfg.head_dim}
        attention_formats = []
        for layer in range(cfg.num_layers):
            p = f"layers.{layer}"
            writer.add_tensor(f"{p}/input_layernorm.weight", src.vector(f"{p}/input_layernorm", (cfg.hidden_size,)))
            formats = {name: src.matrix_format(f"{p}/attn/{name}") for name in widths}
            if len(set(formats.values())) == 1:  # one matmul: q, k, v rows stacked
                parts = [src.matrix(f"{p}/attn/{name}", rows, cfg.hidden_size) for name, rows in widths.items()]
                stacked = {suffix: np.concatenate([arrays[suffix] for _, arrays, _ in parts]) for suffix in parts[0][1]}
                writer.add_matrix(f"{p}/attn/qkv", parts[0][0], stacked, "+".join(sorted({t for *_, t in parts})))
                formats = {"qkv": parts[0][0]}
            else:
                for name, rows in widths.items():
                    matrix(f"{p}/attn/{name}", rows, cfg.hidden_size)
            formats["o_proj"] = matrix(f"{p}/attn/o_proj", cfg.hidden_size, widths["q_proj"])
            attention_formats.append(formats)
            writer.add_tensor(f"{p}/post_attention_layernorm.weight",
                              src.vector(f"{p}/post_attention_layernorm", (cfg.hidden_size,)))
            writer.add_tensor(f"{p}/router.weight", src.vector(f"{p}/router", (cfg.num_experts, cfg.hidden_size)))
            for expert in range(cfg.num_experts):
                writer.add_expert(layer, expert, src.expert(layer, expert))
            progress("layers", layer + 1, cfg.num_layers)
        writer.add_tensor("norm.weight", src.vector("norm", (cfg.hidden_size,)))
        head_format = writer.matrix_format("embed_tokens")
        if src.has_lm_head():
            head_format = matrix("lm_head", cfg.vocab_size, cfg.hidden_size)
        for layer in range(cfg.num_layers):
            writer.add_graph(f"layers.{layer}.attention", graphs.attention_graph(cfg, layer, formats=attention_formats[layer]))
        for key, layout in writer.layouts.items():
            formats = {m: QuantFormat.parse(name) for m, name in layout["formats"].items()}
            writer.add_graph(layout["graph"], graphs.expert_graph(cfg, formats=formats))
        writer.add_graph("head", graphs.head_graph(cfg, fmt=head_format))
        writer.add_text("tokenizer.json", src.tokenizer_json())
        template = src.chat_template()
        if template:
            writer.add_text("chat_template.jinja", template)
        progress("checksums", 0, 1)
        writer.finish(src.describe())
        progress("checksums", 1, 1)
    except BaseException:
        writer.abort()
        raise


def convert(source: str | os.PathLike, dest: str | os.PathLike, progress: Progress | None = None,
            quantize: str | None = None) -> Path:
    """Convert `source` (a `.gguf` file or a Hugging Face model directory) into bundle `dest`.

    `quantize`: None keeps every GGUF matrix at the precision it has (a float checkpoint becomes
    Q4_0); "q4_0" or "q8_0" stores every matrix in that format, which may lose precision."""
    if quantize is not None and quantize not in CHOICES:
        raise ConversionError(f"unknown quantization {quantize!r} (choose from {', '.join(CHOICES)})")
    force = CHOICES[quantize] if quantize else None
    source, dest = Path(source).expanduser(), Path(dest).expanduser()
    if dest.exists() and any(dest.iterdir()) if dest.is_dir() else dest.exists():
        raise ConversionError(f"{dest}: destination already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed conversion
    partial = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    try:
        src = open_source(source, force)
        _write(src, partial, progress or (lambda *_: None))
        if dest.is_dir():
            dest.rmdir()
        os.replace(partial, dest)
    except StchatRuntimeError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except OSError as error:
        shutil.rmtree(partial, ignore_errors=True)
        raise ConversionError(f"conversion failed: {error}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return dest
