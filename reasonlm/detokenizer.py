"""Streamed token ids -> text, incrementally: what chat prints and what serve streams as they
are generated (one Detokenizer per answer)."""
from __future__ import annotations


class Detokenizer:
    """Token ids -> new text, incrementally. Decodes a short window of recent tokens (the
    prefix/read offsets of HF text-generation-inference) so the cost per token is constant,
    sentencepiece leading spaces survive, and half a UTF-8 character ('\\ufffd') waits for the
    rest of its bytes."""

    def __init__(self, tokenizer, emit):
        self.tokenizer, self.emit = tokenizer, emit
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int):
        self.ids.append(token_id)
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.emit(now[len(before):])
            self.prefix, self.read = self.read, len(self.ids)

    def finish(self):
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before):
            self.emit(now[len(before):])
