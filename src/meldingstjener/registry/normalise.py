"""Text folding for recipient search, so that "Tromsø", "Tromso" and "tromsoe" are one word.

Casefold, spell the Norwegian letters out the way people type them without a Norwegian keyboard
(æ -> ae, ø -> o, å -> a) and then collapse the two-letter spellings (oe -> o, aa -> a) so both
directions meet; accents are stripped (é -> e). Index and query go through the same function,
so the few words where "oe" or "aa" is genuine (e.g. "Noen") still match themselves.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_LETTERS = str.maketrans({"æ": "ae", "ø": "o", "å": "a", "ð": "d", "þ": "th", "ß": "ss"})
_DIGRAPHS = (("oe", "o"), ("aa", "a"))
_TOKEN = re.compile(r"[^\W_]+")


@lru_cache(maxsize=65536)
def fold_word(word: str) -> str:
    """One word, folded (see module docstring)."""
    text = word.casefold().translate(_LETTERS)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    for digraph, single in _DIGRAPHS:
        text = text.replace(digraph, single)
    return text


def tokens(text: str | None) -> tuple[str, ...]:
    """The folded words of ``text`` in order, without punctuation."""
    if not text:
        return ()
    return tuple(folded for raw in _TOKEN.findall(text) if (folded := fold_word(raw)))
