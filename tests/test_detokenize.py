"""Streaming detokenization: whole characters only, nothing lost, special tokens skipped."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from runtime.detokenize import MAX_HELD_TOKENS, Detokenizer

MIXED = "café 日本語 🎉 naïve, aé done.\n"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """Byte-level BPE over the 256 byte symbols plus two merges: every non-ASCII character is
    split into byte tokens, and "aÃ" is 'a' glued to the first byte of 'é' (0xC3)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    merges = [("a", "Ã"), ("Ġ", "d")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|im_end|>"])
    return tokenizer


def ids_of(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def stream(det: Detokenizer, ids) -> list[str]:
    return [det.add(i) for i in ids]


def test_multibyte_characters_are_emitted_only_when_complete(tok):
    ids = ids_of(tok, "日")
    assert len(ids) == 3
    det = Detokenizer(tok)
    assert stream(det, ids) == ["", "", "日"]
    assert det.flush() == "" and det.text == "日"


def test_token_with_text_and_a_partial_character_is_held_whole(tok):
    ids = ids_of(tok, "aé")
    assert [tok.id_to_token(i) for i in ids] == ["aÃ", "©"]
    det = Detokenizer(tok)
    assert stream(det, ids) == ["", "aé"]


def test_stream_never_shows_replacement_and_reassembles_text(tok):
    ids = ids_of(tok, MIXED)
    det = Detokenizer(tok)
    pieces = stream(det, ids)
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) + det.flush() == MIXED
    assert det.text == MIXED
    assert sum(1 for p in pieces if p) < len(ids)  # some tokens were held back


def test_special_tokens_skipped_or_kept(tok):
    ids = ids_of(tok, "hi<|im_end|>é")
    assert tok.token_to_id("<|im_end|>") in ids
    det = Detokenizer(tok)
    assert "".join(stream(det, ids)) + det.flush() == "hié"
    det = Detokenizer(tok, skip_special=False)
    assert "".join(stream(det, ids)) + det.flush() == "hi<|im_end|>é"


def test_flush_releases_an_unfinished_tail_as_the_tokenizer_renders_it(tok):
    ids = ids_of(tok, "ok 日")[:-1]  # the last byte of 日 never arrives
    det = Detokenizer(tok)
    assert "".join(stream(det, ids)) == "ok "
    assert det.pending_tokens == 2
    assert det.flush() == "\ufffd"
    assert det.text == tok.decode(ids)
    assert det.flush() == ""


def test_invalid_bytes_do_not_stall_the_stream(tok):
    lone = ids_of(tok, "é")[1]  # 0xA9 alone is never valid UTF-8
    det = Detokenizer(tok)
    out = "".join(stream(det, [lone] * (MAX_HELD_TOKENS + 2)))
    assert out and set(out) == {"\ufffd"}  # released before any flush


def test_window_stays_small_over_a_long_stream(tok):
    ids = ids_of(tok, MIXED * 40)
    det = Detokenizer(tok)
    longest = 0
    for i in ids:
        det.add(i)
        longest = max(longest, len(det._window))
    assert longest <= 8  # context of the last emission + at most a 4-byte character
    det.flush()
    assert det.text == MIXED * 40


def test_decoders_that_strip_a_leading_space_still_stream_spaces():
    # Metaspace drops the space of the sequence's first word; decoding the new id alone would
    # lose every space between words.
    vocab = {"[UNK]": 0, "▁hello": 1, "▁world": 2, "!": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.decoder = decoders.Metaspace()
    det = Detokenizer(tokenizer)
    assert stream(det, [1, 2, 3, 2]) == ["hello", " world", "!", " world"]
    assert det.text == tokenizer.decode([1, 2, 3, 2])
