"""Deterministic, language-agnostic tokeniser shared by training and embedding time.

Text is NFKC-normalised and lowercased, then cut into runs: alphanumeric runs become word tokens,
runs of CJK characters (Han, Hiragana, Katakana, Hangul) become their character unigrams and
character n-grams up to ``char_ngrams`` (bigrams by default), so Chinese and Japanese titles get
useful tokens without a word segmenter. The result is one whitespace-joined string per text, which
``TextVectorization(split="whitespace", standardize=None)`` consumes unchanged inside the tower.

Example:
    >>> tokenize("Red Running-Shoes 2024")
    'red running shoes 2024'
    >>> tokenize("无线耳机")
    '无 线 耳 机 无线 线耳 耳机'
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

# Han (incl. ext. A and compatibility), Hiragana, Katakana (+ phonetic ext., half-width), Hangul.
_CJK = (
    "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\uff66-\uff9f\uac00-\ud7af\u1100-\u11ff"
)
_RUN = re.compile(rf"([{_CJK}]+)|([^\W_{_CJK}]+)")


def tokenize(text: str | None, char_ngrams: int = 2) -> str:
    """Whitespace-joined tokens of one text.

    Args:
        text: any string (``None`` and non-strings give ``""``).
        char_ngrams: longest character n-gram emitted for CJK runs (1 = unigrams only).

    Returns:
        Tokens joined by single spaces: word tokens in order; for each CJK run its unigrams, then
        bigrams, … up to ``char_ngrams``.
    """
    if not isinstance(text, str) or not text:
        return ""
    if char_ngrams < 1:
        raise ValueError(f"`char_ngrams` must be >= 1, got {char_ngrams}")
    norm = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    for match in _RUN.finditer(norm):
        cjk, word = match.group(1), match.group(2)
        if word:
            out.append(word)
            continue
        for n in range(1, char_ngrams + 1):
            out.extend(cjk[i : i + n] for i in range(len(cjk) - n + 1))
    return " ".join(out)


def tokenize_fields(fields: Iterable[str | None], char_ngrams: int = 2) -> str:
    """Tokens of several text fields of one item (title first), joined in field order."""
    parts = [tokenize(f, char_ngrams) for f in fields]
    return " ".join(p for p in parts if p)


def build_vocabulary(token_strings: Iterable[str], max_size: int, min_items: int = 1) -> list[str]:
    """Most frequent tokens (ties broken alphabetically, so the result is deterministic).

    Args:
        token_strings: outputs of :func:`tokenize`, one per item.
        max_size: at most this many tokens (callers reserve room for padding and OOV themselves).
        min_items: keep only tokens that occur in at least this many of the strings (document
            frequency). A token of one item only is that item's id in disguise: it lets the text
            branch memorise warm items and is an untrained, meaningless vector for a new one.

    Returns:
        Token list, most frequent first.
    """
    counts: Counter[str] = Counter()
    docs: Counter[str] = Counter()
    for s in token_strings:
        if s:
            toks = s.split(" ")
            counts.update(toks)
            docs.update(set(toks))
    floor = max(1, int(min_items))
    ranked = sorted(((t, c) for t, c in counts.items() if docs[t] >= floor), key=lambda kv: (-kv[1], kv[0]))
    return [tok for tok, _ in ranked[: max(0, int(max_size))]]
