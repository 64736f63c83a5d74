"""Which language a text is written in (enough to tell "Chinese in, Chinese out" from an answer that switched)."""

from __future__ import annotations

import re

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
# Letters of other scripts (Cyrillic, Arabic, kana, Hangul...): anything alphabetic that is neither of the above.
_OTHER_WORD = re.compile(r"[^\W\d_A-Za-z\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def detect_language(text: str) -> str | None:
    """'zh', 'en' (any Latin-script text), 'other', or None when the text has no letters at all.

    A Han character carries about as much as a Latin word, so the two are compared count for count: "答案：C"
    is Chinese, "The answer is 阿司匹林 (aspirin)" is English.
    """
    han = len(_HAN.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    other = len(_OTHER_WORD.findall(text))
    if not (han or latin or other):
        return None
    if han > latin and han >= other:
        return "zh"
    if latin >= other:
        return "en"
    return "other"
