"""Contamination check: does a training question share a long stretch of text with an evaluation question?

HuatuoGPT-o1 dropped training problems that share 64 consecutive characters with a test question after
normalization; a reward trained on the test set proves nothing. Both sides are normalized the same way (NFKC,
lowercase, everything but letters and digits removed, so spacing, punctuation and case do not hide a copy), and a
training text overlaps when any 64-character window of it occurs in an evaluation text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

#: Consecutive normalized characters two texts must share to count as overlapping (HuatuoGPT-o1's rule).
OVERLAP_CHARS = 64


def normalize(text: str) -> str:
    """NFKC, lowercase, letters and digits only (CJK characters are letters)."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).lower() if ch.isalnum())


def _windows(text: str, n: int) -> Iterable[str]:
    return (text[i : i + n] for i in range(len(text) - n + 1))


class OverlapIndex:
    """Every `n`-character window of the evaluation texts, to test training texts against."""

    def __init__(self, texts: Iterable[str], n: int = OVERLAP_CHARS) -> None:
        self.n = n
        self._windows: set[int] = set()
        self._short: set[str] = set()  # evaluation texts shorter than n: only a copy of the whole text counts
        for text in texts:
            norm = normalize(text)
            if len(norm) < n:
                if norm:
                    self._short.add(norm)
                continue
            self._windows.update(hash(w) for w in _windows(norm, n))

    def __len__(self) -> int:
        return len(self._windows) + len(self._short)

    def overlaps(self, text: str) -> bool:
        norm = normalize(text)
        if any(s in norm for s in self._short):
            return True
        return any(hash(w) in self._windows for w in _windows(norm, self.n))


def overlapping(texts: Sequence[str], against: Iterable[str], n: int = OVERLAP_CHARS) -> list[int]:
    """Indices of `texts` that share `n` consecutive normalized characters with any text of `against`."""
    index = OverlapIndex(against, n)
    return [i for i, t in enumerate(texts) if index.overlaps(t)]
