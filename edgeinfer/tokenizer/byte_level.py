"""GPT-2's byte-level alphabet: the reversible map between the 256 byte values and printable characters
that byte-level BPE vocabularies spell their tokens in. Read by the vocabulary (its byte tokens) and the
BPE encoder; it imports nothing of edgeinfer."""

from __future__ import annotations


def _byte_to_unicode() -> list[str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return [table[b] for b in range(256)]


BYTE_TO_UNICODE: list[str] = _byte_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_UNICODE)}
# latin-1 decoding turns each byte into the char of the same number; this table then byte-encodes it
_LATIN1_TO_BYTE_ENCODED = {b: BYTE_TO_UNICODE[b] for b in range(256)}


def byte_encode(word: str) -> str:
    """The GPT-2 byte-encoded form of `word` (its UTF-8 bytes, one printable char each)."""
    return word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_BYTE_ENCODED)


def byte_decode(text: str) -> bytes:
    """Inverse of `byte_encode` for the chars it produces; other chars are UTF-8 encoded as they are."""
    out = bytearray()
    for c in text:
        b = UNICODE_TO_BYTE.get(c)
        if b is None:
            out += c.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)
