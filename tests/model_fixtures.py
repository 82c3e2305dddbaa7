"""Synthetic models shared by the runtime tests: built once per session, in both source formats."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import runtime
from runtime import synthetic

_ROOT = Path(tempfile.mkdtemp(prefix="stchat-models-"))

LAYOUTS = {"4b": synthetic.TINY_4B_LIKE, "21b": synthetic.TINY_21B_LIKE}
# Longer than the 21B-like sliding window (8), so the window really masks.
PROMPT = ("The quick brown fox jumps over the lazy dog, then it runs far away to find "
          "some food, water and a nice place to sleep before the night comes back again.")


@functools.lru_cache(maxsize=None)
def weights(layout: str, seed: int = 0):
    return synthetic.make_weights(LAYOUTS[layout], seed=seed)


@functools.lru_cache(maxsize=None)
def hf_dir(layout: str, dtype: str = "float32") -> Path:
    return synthetic.write_hf_dir(LAYOUTS[layout], _ROOT / f"hf-{layout}-{dtype}", weights=weights(layout), dtype=dtype)


@functools.lru_cache(maxsize=None)
def gguf_file(layout: str) -> Path:
    return synthetic.write_gguf(LAYOUTS[layout], _ROOT / f"{layout}.gguf", weights=weights(layout))


def bundle(layout: str, source: str = "gguf") -> Path:
    return _bundle(layout, source)


@functools.lru_cache(maxsize=None)
def _bundle(layout: str, source: str) -> Path:
    src = gguf_file(layout) if source == "gguf" else hf_dir(layout)
    return runtime.convert(src, _ROOT / f"bundle-{layout}-{source}")


def model(layout: str, accuracy_level: int = 4, kv_dtype: str = "float16"):
    return _model(layout, accuracy_level, kv_dtype)


@functools.lru_cache(maxsize=None)
def _model(layout: str, accuracy_level: int, kv_dtype: str):
    return runtime.load(bundle(layout), accuracy_level=accuracy_level, kv_dtype=kv_dtype)


def prompt_ids(text: str = PROMPT) -> list[int]:
    return synthetic.make_tokenizer().encode(text, add_special_tokens=False).ids


def hf_config(layout: str) -> dict:
    return LAYOUTS[layout].hf_config(synthetic.make_tokenizer())
