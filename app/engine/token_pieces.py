"""The bytes of each token, as llama.cpp renders them, cached per vocabulary."""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp

PIECE_BUFFER_BYTES = 256


class TokenPieces:
    """Token id -> its bytes (a piece may be part of a UTF-8 character); one per engine."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._pieces: dict[int, bytes] = {}
        self._buffer = ctypes.create_string_buffer(PIECE_BUFFER_BYTES)

    def __call__(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buf = self._buffer
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                # A negative count is the size the piece needs.
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:n]
            self._pieces[token] = piece
        return piece
