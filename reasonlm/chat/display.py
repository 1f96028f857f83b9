"""What the chat REPL writes to the terminal: streamed answer text (decoded incrementally by
reasonlm/detokenizer.py), reasoning lines dimmed and the '#### N' line highlighted (Painter), and every
control character a model or a user could send shown escaped."""
from __future__ import annotations

from reasonlm.answer import FINAL_MARK


DIM, FINAL, GOOD, BAD, BOLD, RESET = "\x1b[2m", "\x1b[1;32m", "\x1b[32m", "\x1b[1;31m", "\x1b[1m", "\x1b[0m"
STRUCK = "\x1b[2;9m"  # dimmed and struck through: a line the search threw away

# A model (an adapter from the internet, say) can emit escape sequences that set the window title,
# write the clipboard (OSC 52) or move the cursor over earlier lines. Every control character but
# newline and tab (C0, DEL and C1: 0x9b is a one-byte CSI on some terminals) is shown escaped.
CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c not in (0x09, 0x0A)}


def readable_input(text: str) -> tuple[str, bool]:
    """(text, whether it changed): a line typed, piped or passed with -p, whose bytes that are not
    UTF-8 (which Python hands over as lone surrogates) become U+FFFD; the tokenizer cannot encode
    a lone surrogate, and the session would end with a traceback."""
    try:
        text.encode("utf-8")
        return text, False
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape" if all(
            not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text) else "replace")
        return raw.decode("utf-8", "replace"), True


NOT_UTF8 = "[your input had bytes that are not UTF-8: each is shown as \ufffd]"


def printable(text: str) -> str:
    """`text` with every control character except newline and tab written as a visible \\xNN."""
    return text.translate(CONTROL_ESCAPES)


class Painter:
    """Writes streamed answer text: reasoning lines dimmed, the '#### N' line highlighted.

    A line's style is known once its first non-blank characters are (or cannot become) the
    final-answer mark, so at most len('####') characters are held back at the start of a line.
    """

    def __init__(self, out, plain: bool):
        self.out, self.plain = out, plain
        self.pending, self.style, self.column = "", None, 0  # style None = start of a line

    def _write(self, text: str):
        self.out.write(text)
        self.out.flush()

    def _start_line(self, style: str):
        self.style = style
        self._write(("" if self.plain else style) + self.pending)
        self.pending = ""

    def feed(self, text: str):
        for ch in printable(text):
            if ch == "\n":
                if self.pending:
                    self._start_line(DIM)
                self._write(("" if self.plain or self.style is None else RESET) + "\n")
                self.style, self.column = None, 0
            elif self.style is None:
                self.pending += ch
                head = self.pending.lstrip()
                if head.startswith(FINAL_MARK):
                    self._start_line(FINAL)
                elif not FINAL_MARK.startswith(head):
                    self._start_line(DIM)
                self.column += 1
            else:
                self._write(ch)
                self.column += 1

    def close(self):
        """End the answer: flush held-back text, reset the style, finish the line."""
        if self.pending:
            self._start_line(DIM)
        if self.column:
            self._write(("" if self.plain else RESET) + "\n")
        self.style, self.column = None, 0
