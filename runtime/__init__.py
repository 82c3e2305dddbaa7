"""stchat's inference runtime: SmallThinker on ONNX Runtime's CPU provider.

Public API (relied on by `stchat/` and the tests):
    convert(source, dest) -> Path        a .gguf file or Hugging Face directory -> bundle
    load(bundle, *, memory_budget=None, threads=None) -> Model
    Model.logits(token_ids) -> float32 [S, V]
and the generation layer (sampling, events, ChatSession). Nothing here imports the UI.
"""
from .convert import convert
from .errors import BudgetTooSmall, BundleError, ContextOverflow, ConversionError, StchatRuntimeError
from .model import Model, load

__all__ = [
    "convert", "load", "Model",
    "StchatRuntimeError", "ConversionError", "BundleError", "BudgetTooSmall", "ContextOverflow",
]
