"""A reply's text and its end rules: one place for what every decode path applies after each sampled
token. Text comes out through a streaming detokenizer (never half a UTF-8 character) and a stop-string
filter that holds back only the text that could still become a stop string, so a stop string is never
shown and everything before it always is.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..tokenizer.stream import StreamingDetokenizer


class StopFilter:
    """Holds back text that might be the start of a stop string; finds the first stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Text safe to show now; sets `stopped` (and drops the rest) when a stop string appears."""
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        hold = 0
        for s in self.stops:  # the longest suffix of pending that is a proper prefix of a stop string
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class ReplyText:
    """One reply's tokens as text, and the end rules every decode loop applies after each sampled token
    (plain, speculative and the batch runner alike): an end-of-generation token ends the reply ("stop"),
    a stop string ends it at exactly the token that completes it ("stop", its text and what follows never
    shown), `max_tokens` ends it ("length"). Text goes through the streaming detokenizer, then the stop
    filter."""

    def __init__(self, tokenizer, stop: Sequence[str], max_tokens: int):
        self.tokenizer = tokenizer
        self.detok = StreamingDetokenizer(tokenizer)
        self.stops = StopFilter(stop)
        self.max_tokens = max_tokens
        self.tokens: list[int] = []
        self.finish: str | None = None  # "stop" or "length" once the reply has ended

    def push(self, token: int) -> str:
        """Take the next sampled token; the text that may be shown now ("" if none). Sets `finish` when
        this token ends the reply."""
        self.tokens.append(token)
        if self.tokenizer.is_eog(token):
            self.finish = "stop"
            return ""
        text = self.stops.push(self.detok.add(token))
        if self.stops.stopped:
            self.finish = "stop"
        elif len(self.tokens) >= self.max_tokens:
            self.finish = "length"
        return text

    def tail(self) -> str:
        """The text still held back, at the end of a reply that did not end on a stop string (a stop
        string completed by it ends the reply as "stop")."""
        if self.stops.stopped:
            return ""
        text = self.stops.push(self.detok.flush())
        if self.stops.stopped:
            self.finish = "stop"
            return text
        return text + self.stops.flush()


__all__ = ["ReplyText", "StopFilter"]
