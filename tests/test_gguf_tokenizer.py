"""GGUF tokenizer metadata -> `tokenizers.Tokenizer`: same ids and same text as the original."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from runtime.errors import ConversionError
from runtime.gguf_tokenizer import QWEN2_PATTERN, read_gguf_tokenizer_fields, tokenizer_from_gguf_fields

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<think>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024, isn't it?",
    "def add(a, b):\n    return a + b\n\nprint(add(12, 345))\n",
    "Numbers: 3.14159 2718 1000000 and more numbers 42 7 99.",
    "  indented\tlines\r\n\r\nwith    spaces and tabs   ",
    "café naïve résumé 日本語のテキスト 🎉 emoji",
] * 3
SAMPLES = [
    "Hello world! It's a test; we'll see.",
    "for i in range(10):\n\tprint(i ** 2)  # squares\n",
    "1234567890 3.5e-7 -42",
    "line one\n\n\nline two\r\n   trailing   ",
    "café 日本語 🎉 naïve Ωμέγα",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<think>hmm</think> done<|endoftext|>",
    "",
]


def make_small_tokenizer(pre: str = "qwen2") -> Tokenizer:
    """A tiny byte-level BPE trained here, laid out like Qwen2's (specials after the vocab)."""
    tok = Tokenizer(models.BPE())
    if pre == "qwen2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(SPECIALS)
    tok.add_tokens(USER_DEFINED)
    return tok


def gguf_fields(tok: Tokenizer, pre: str = "qwen2") -> dict:
    """The tokenizer in the form llama.cpp's converter writes it."""
    size = tok.get_vocab_size(with_added_tokens=True)
    tokens = [tok.id_to_token(i) for i in range(size)]
    types = [3 if t in SPECIALS else 4 if t in USER_DEFINED else 1 for t in tokens]
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": tok.token_to_id("<|endoftext|>"),
        "tokenizer.ggml.eos_token_id": tok.token_to_id("<|im_end|>"),
        "tokenizer.ggml.padding_token_id": tok.token_to_id("<|endoftext|>"),
    }


@pytest.fixture(scope="module")
def original() -> Tokenizer:
    return make_small_tokenizer()


def assert_equivalent(a: Tokenizer, b: Tokenizer) -> None:
    assert a.get_vocab_size(with_added_tokens=True) == b.get_vocab_size(with_added_tokens=True)
    for text in SAMPLES:
        ids = a.encode(text, add_special_tokens=False).ids
        assert b.encode(text, add_special_tokens=False).ids == ids, text
        for skip in (False, True):
            assert b.decode(ids, skip_special_tokens=skip) == a.decode(ids, skip_special_tokens=skip)
        assert b.decode(ids, skip_special_tokens=False) == text


def test_rebuilt_tokenizer_matches_original(original):
    assert_equivalent(original, tokenizer_from_gguf_fields(gguf_fields(original)))


def test_specials_are_single_ids_and_multibyte_text_splits(original):
    rebuilt = tokenizer_from_gguf_fields(gguf_fields(original))
    ids = rebuilt.encode("<|im_start|>x<|im_end|><think>", add_special_tokens=False).ids
    assert ids[0] == original.token_to_id("<|im_start|>")
    assert ids[-2:] == [original.token_to_id("<|im_end|>"), original.token_to_id("<think>")]
    # control tokens vanish with skip_special_tokens, user-defined ones are text
    assert rebuilt.decode(ids, skip_special_tokens=True) == "x<think>"
    assert len(rebuilt.encode("🎉", add_special_tokens=False).ids) > 1  # unseen bytes: byte tokens


def test_qwen2_pre_tokenizer_splits_digits_and_normalizes_nfc(original):
    rebuilt = tokenizer_from_gguf_fields(gguf_fields(original))
    pieces = [p for p, _ in rebuilt.pre_tokenizer.pre_tokenize_str("ab 123")]
    assert pieces == ["ab", "Ġ", "1", "2", "3"]
    assert rebuilt.encode("cafe\u0301").ids == rebuilt.encode("caf\u00e9").ids


def test_gpt2_default_pre_tokenizer():
    tok = make_small_tokenizer(pre="default")
    for pre in ("default", "gpt2"):
        assert_equivalent(tok, tokenizer_from_gguf_fields(gguf_fields(tok, pre=pre)))


def test_unsupported_model_and_pre_are_one_line_errors(original):
    fields = gguf_fields(original)
    with pytest.raises(ConversionError, match=r"^unsupported GGUF tokenizer model 'llama'; expected 'gpt2'$"):
        tokenizer_from_gguf_fields({**fields, "tokenizer.ggml.model": "llama"})
    with pytest.raises(ConversionError, match="unsupported GGUF pre-tokenizer 'klingon'"):
        tokenizer_from_gguf_fields({**fields, "tokenizer.ggml.pre": "klingon"})
    with pytest.raises(ConversionError, match=r"merges\[0\]"):
        tokenizer_from_gguf_fields({**fields, "tokenizer.ggml.merges": ["nospace"]})


def test_round_trip_through_a_gguf_file(original, tmp_path):
    fields = gguf_fields(original)
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "smallthinker")
    writer.add_tokenizer_model(fields["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(fields["tokenizer.ggml.pre"])
    writer.add_token_list(fields["tokenizer.ggml.tokens"])
    writer.add_token_types(fields["tokenizer.ggml.token_type"])
    writer.add_token_merges(fields["tokenizer.ggml.merges"])
    writer.add_bos_token_id(fields["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(fields["tokenizer.ggml.eos_token_id"])
    writer.add_pad_token_id(fields["tokenizer.ggml.padding_token_id"])
    writer.add_chat_template(template)
    writer.add_tensor("dummy", np.zeros((2, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    read = read_gguf_tokenizer_fields(gguf.GGUFReader(str(path)))
    assert read == {**fields, "tokenizer.chat_template": template}
    assert all(type(v) is int for v in read["tokenizer.ggml.token_type"])
    assert type(read["tokenizer.ggml.bos_token_id"]) is int
    assert_equivalent(original, tokenizer_from_gguf_fields(read))
