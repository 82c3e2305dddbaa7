"""Streaming token ids to text without ever showing half a character.

A byte-level BPE token is a run of bytes, not of characters: "日" may arrive as three tokens.
Decoding a prefix that stops inside a character yields a trailing U+FFFD, which a UI must not
print. `Detokenizer` decodes only a short window of recent ids: the ids of the text emitted
last (context, so decoders that treat a sequence's first token specially stay correct) plus the
ids not yet emitted. While the window's text ends in U+FFFD it holds the new ids back; once the
character completes it emits the text past what was already emitted and slides the window.
Per token that is one or two decodes of a handful of ids, whatever the length of the reply.

A tail that is still incomplete when `flush()` is called is emitted as the tokenizer renders it
(U+FFFD), so after `flush()` `.text` equals decoding every id at once.
"""
from __future__ import annotations

import tokenizers

_REPLACEMENT = "\ufffd"
# A UTF-8 character is at most 4 bytes, so at most 4 tokens. More held ids than this means the
# bytes are invalid, not incomplete: emit them rather than stall the stream.
MAX_HELD_TOKENS = 8


class Detokenizer:
    def __init__(self, tokenizer: tokenizers.Tokenizer, skip_special: bool = True):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._window: list[int] = []  # ids: [emitted context | pending]
        self._read = 0  # index in _window of the first pending (not yet emitted) id
        self._context_chars = 0  # len(decode(_window[:_read]))
        self._parts: list[str] = []  # everything emitted, in order

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special) if ids else ""

    def add(self, token_id: int) -> str:
        """Feed one id; return the text it completes ('' while a character is unfinished)."""
        self._window.append(int(token_id))
        text = self._decode(self._window)
        held = len(self._window) - self._read
        if text.endswith(_REPLACEMENT) and held < MAX_HELD_TOKENS:
            return ""
        return self._emit(text)

    def flush(self) -> str:
        """Emit whatever is held (an unfinished tail becomes U+FFFD) and start afresh."""
        out = self._emit(self._decode(self._window)) if self._read < len(self._window) else ""
        self._window, self._read, self._context_chars = [], 0, 0
        return out

    def _emit(self, text: str) -> str:
        new = text[self._context_chars:]
        # The ids just emitted become the context of the next window.
        self._window = self._window[self._read:]
        self._read = len(self._window)
        self._context_chars = len(self._decode(self._window))
        if new:
            self._parts.append(new)
        return new

    @property
    def text(self) -> str:
        """All text emitted so far."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    @property
    def pending_tokens(self) -> int:
        """Ids received but not yet turned into text (an unfinished character)."""
        return len(self._window) - self._read
