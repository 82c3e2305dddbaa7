"""Rebuilding a Hugging Face `tokenizers` tokenizer from the vocabulary stored inside a GGUF file.

A GGUF checkpoint carries its tokenizer as metadata (`tokenizer.ggml.*`), not as a
`tokenizer.json`; bundles need the latter. For the byte-level BPE family (`tokenizer.ggml.model`
"gpt2", which covers Qwen2 and so SmallThinker) the pieces map one to one: the token list is
the BPE vocabulary (index = id), merges are "left right" strings, `tokenizer.ggml.pre` names
the pre-tokenizer regex, and control / user-defined token types become added tokens so they
are matched whole. `read_gguf_tokenizer_fields` pulls those keys out of a `GGUFReader` as plain
Python so the builder itself needs no file.
"""
from __future__ import annotations

import numpy as np
from gguf import GGUFValueType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from .errors import ConversionError

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

FIELD_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.chat_template",
)

# Pre-tokenizer split patterns by `tokenizer.ggml.pre` (None: GPT-2's own, built into ByteLevel).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_PATTERNS = {"qwen2": QWEN2_PATTERN, "llama-bpe": LLAMA3_PATTERN, "default": None, "gpt2": None}
NFC_PRES = {"qwen2"}  # Qwen2's tokenizer.json normalizes to NFC; llama.cpp skips it, HF does not


def _field(fields: dict, key: str, required: bool = True):
    value = fields.get(key)
    if value is None and required:
        raise ConversionError(f"GGUF metadata has no '{key}'")
    return value


def _pre_tokenizer(pre: str):
    if pre not in PRE_PATTERNS:
        known = ", ".join(sorted(PRE_PATTERNS))
        raise ConversionError(f"unsupported GGUF pre-tokenizer '{pre}'; expected one of {known}")
    pattern = PRE_PATTERNS[pre]
    if pattern is None:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _merges(raw: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for index, merge in enumerate(raw):
        parts = merge.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ConversionError(f"GGUF tokenizer.ggml.merges[{index}] is not 'left right': {merge!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def tokenizer_from_gguf_fields(fields: dict) -> Tokenizer:
    """A `tokenizers.Tokenizer` equivalent to the GGUF vocabulary described by `fields`."""
    model = _field(fields, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ConversionError(f"unsupported GGUF tokenizer model '{model}'; expected 'gpt2'")
    tokens = list(_field(fields, "tokenizer.ggml.tokens"))
    types = list(fields.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise ConversionError(f"GGUF tokenizer has {len(tokens)} tokens but {len(types)} token types")
    merges = _merges(list(fields.get("tokenizer.ggml.merges") or []))

    vocab: dict[str, int] = {}
    for token_id, token in enumerate(tokens):
        vocab.setdefault(token, token_id)  # a duplicate string keeps its first id
    unknown = next((tokens[i] for i, t in enumerate(types) if t == TOKEN_UNKNOWN), None)
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=unknown, fuse_unk=False,
                     byte_fallback=False, ignore_merges=False)

    tokenizer = Tokenizer(bpe)
    pre = fields.get("tokenizer.ggml.pre") or "default"
    if pre in NFC_PRES:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()

    # Control tokens are special (skipped when decoding with skip_special_tokens); user-defined
    # ones are ordinary text that must still match whole. Their ids already exist in the vocab.
    added = [AddedToken(tokens[i], special=(t == TOKEN_CONTROL), normalized=False)
             for i, t in enumerate(types) if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED)]
    tokenizer.add_special_tokens([a for a in added if a.special])
    tokenizer.add_tokens([a for a in added if not a.special])
    return tokenizer


def read_gguf_tokenizer_fields(reader) -> dict:
    """The tokenizer keys of a `gguf.GGUFReader` as plain Python (str, int, list); absent keys
    are left out."""
    out = {}
    for key in FIELD_KEYS:
        field = reader.fields.get(key)
        if field is not None:
            out[key] = _field_value(field)
    return out


def _field_value(field):
    """A ReaderField's value: strings decoded as UTF-8, numbers as Python scalars, arrays as lists."""
    main = field.types[0]
    if main == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        if not field.data:
            return []
        return np.concatenate([field.parts[i] for i in field.data]).tolist()
    if main == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]
