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
from ..bundle import BundleWriter
from ..errors import ConversionError, StchatRuntimeError
from .gguf_source import GGUFSource
from .hf_source import HFSource

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def open_source(source: Path):
    if source.is_dir():
        return HFSource(source)
    if source.is_file():
        return GGUFSource(source)
    raise ConversionError(f"{source}: no such file or directory")


def _write(src, dest: Path, progress: Progress) -> None:
    # "tied" in a bundle means what the runtime does: no lm_head, the embedding serves
    cfg = replace(src.config, tie_word_embeddings=not src.has_lm_head())
    writer = BundleWriter(dest, cfg)
    try:
        writer.add_q4("embed_tokens", *src.matrix("embed_tokens", cfg.vocab_size, cfg.hidden_size))
        q_rows, kv_rows = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        for layer in range(cfg.num_layers):
            p = f"layers.{layer}"
            writer.add_tensor(f"{p}/input_layernorm.weight", src.vector(f"{p}/input_layernorm", (cfg.hidden_size,)))
            q, k, v = (src.matrix(f"{p}/attn/{name}", rows, cfg.hidden_size)
                       for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)))
            writer.add_q4(f"{p}/attn/qkv", np.concatenate([q[0], k[0], v[0]]), np.concatenate([q[1], k[1], v[1]]))
            writer.add_q4(f"{p}/attn/o_proj", *src.matrix(f"{p}/attn/o_proj", cfg.hidden_size, q_rows))
            writer.add_tensor(f"{p}/post_attention_layernorm.weight",
                              src.vector(f"{p}/post_attention_layernorm", (cfg.hidden_size,)))
            writer.add_tensor(f"{p}/router.weight", src.vector(f"{p}/router", (cfg.num_experts, cfg.hidden_size)))
            for expert in range(cfg.num_experts):
                writer.add_expert(layer, expert, src.expert(layer, expert))
            progress("layers", layer + 1, cfg.num_layers)
        writer.add_tensor("norm.weight", src.vector("norm", (cfg.hidden_size,)))
        if src.has_lm_head():
            writer.add_q4("lm_head", *src.matrix("lm_head", cfg.vocab_size, cfg.hidden_size))
        for layer in range(cfg.num_layers):
            writer.add_graph(f"layers.{layer}.attention", graphs.attention_graph(cfg, layer))
        writer.add_graph("expert", graphs.expert_graph(cfg))
        writer.add_graph("head", graphs.head_graph(cfg))
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


def convert(source: str | os.PathLike, dest: str | os.PathLike, progress: Progress | None = None) -> Path:
    """Convert `source` (a `.gguf` file or a Hugging Face model directory) into bundle `dest`."""
    source, dest = Path(source).expanduser(), Path(dest).expanduser()
    if dest.exists() and any(dest.iterdir()) if dest.is_dir() else dest.exists():
        raise ConversionError(f"{dest}: destination already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed conversion
    partial = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    try:
        src = open_source(source)
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
