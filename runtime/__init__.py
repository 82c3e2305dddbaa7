"""stchat's inference runtime: SmallThinker on ONNX Runtime's CPU provider.

Public API (relied on by `stchat/` and the tests):
    convert(source, dest) -> Path        a .gguf file or Hugging Face directory -> bundle
    load(bundle, *, memory_budget=None, threads=None, context=None, kv_dtype="auto") -> Model
    Model.logits(token_ids) -> float32 [S, V]
and the generation layer (sampling, events, ChatSession, KVPool). Nothing here imports the UI.
"""
from .chat import ChatSession
from .convert import convert
from .detokenize import Detokenizer
from .errors import BudgetTooSmall, BundleError, ContextOverflow, ConversionError, InvalidContext, StchatRuntimeError
from .events import Finished, Notice, TextDelta
from .generate import generate
from .kvpool import KVPool
from .model import Model, load
from .sampling import SamplingParams, make_sampler
from .template import render_chat

__all__ = [
    "convert", "load", "Model",
    "ChatSession", "generate", "KVPool", "SamplingParams", "make_sampler", "Detokenizer", "render_chat",
    "TextDelta", "Notice", "Finished",
    "StchatRuntimeError", "ConversionError", "BundleError", "BudgetTooSmall", "ContextOverflow", "InvalidContext",
]
