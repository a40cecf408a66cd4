"""Answer extraction, as the chain-of-thought harnesses score it: a strict pattern ("The answer is N." /
"So the answer is yes.") decides correctness; a lenient fallback (the last number, the last yes/no, the last
option letter) is recorded separately so a format failure is visible apart from a wrong answer."""

from __future__ import annotations

import re

_NUM = r"-?\$?\s*-?[\d,]*\.?\d+"
_STRICT_NUM = re.compile(r"[Tt]he answer is:?\s*(" + _NUM + r")")
_ANY_NUM = re.compile(_NUM)
_STRICT_YN = re.compile(r"answer is:?\s*\(?(yes|no)\b", re.I)
_ANY_YN = re.compile(r"\b(yes|no)\b", re.I)
_STRICT_OPT = re.compile(r"answer is:?\s*\(([A-Z])\)")
_ANY_OPT = re.compile(r"\(([A-Z])\)")


def _number(s: str) -> float | None:
    s = s.replace("$", "").replace(",", "").replace(" ", "")
    try:
        return float(s)
    except ValueError:
        return None


def extract_number(text: str) -> tuple[float | None, float | None]:
    """(strict, fallback): the number after the first "The answer is", and the last number in the text."""
    m = _STRICT_NUM.search(text)
    strict = _number(m.group(1)) if m else None
    nums = _ANY_NUM.findall(text)
    fallback = _number(nums[-1]) if nums else None
    return strict, fallback


def extract_yes_no(text: str) -> tuple[str | None, str | None]:
    m = _STRICT_YN.search(text)
    strict = m.group(1).lower() if m else None
    found = _ANY_YN.findall(text)
    return strict, (found[-1].lower() if found else None)


def extract_option(text: str) -> tuple[str | None, str | None]:
    m = _STRICT_OPT.search(text)
    found = _ANY_OPT.findall(text)
    return (m.group(1) if m else None), (found[-1] if found else None)


def same_number(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a - b) < 1e-6
