"""Pseudonymisation of user ids and detection of personal data in free text."""

from __future__ import annotations

import hashlib
import hmac
import re

import pandas as pd

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Phone numbers need separators between digit groups (or a leading +country code): product
# titles are full of bare model numbers and dimensions ("36 in. x 80 in.", "HD1650") that a
# looser pattern would flag. A full stop may end the number (end of a sentence), not continue it.
PHONE = re.compile(
    r"(?<![\w/.-])(?:\+\d{1,3}[ .-]?\(?\d{1,4}\)?[ .-]\d{3,4}[ .-]\d{3,4}"
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
    r"|\d{3}[.-]\d{3}[.-]\d{4})(?![\w/-]|\.\w)"
)


def pseudonymize(values: pd.Series, salt: str) -> pd.Series:
    """Map raw user ids to salted HMAC-SHA256 pseudonyms (16 hex digits): `pseudonym` of each.

    The mapping is one-to-one in practice (64 bits) and stable for a given salt, so per-user
    metrics are unchanged while the raw id cannot be recovered without the salt.
    """
    _check_salt(salt)
    cache: dict[str, str] = {}

    def one(raw: object) -> str:
        text = str(raw)
        if text not in cache:
            cache[text] = pseudonym(text, salt)
        return cache[text]

    return values.map(one).astype("string")


def pseudonym(raw: object, salt: str) -> str:
    """One raw id's pseudonym (what pseudonymize maps it to), without pandas: for the request path."""
    _check_salt(salt)
    return hmac.new(salt.encode("utf-8"), str(raw).encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def _check_salt(salt: str) -> None:
    if not salt:
        raise ValueError("a non-empty salt is required to pseudonymise user ids")


def find_pii(texts: pd.Series) -> pd.Series:
    """Boolean mask of texts containing an e-mail address or a phone number."""
    filled = texts.fillna("").astype(str)
    return filled.str.contains(EMAIL) | filled.str.contains(PHONE)


EMAIL_MASK = "[email]"
PHONE_MASK = "[phone]"


def redact_pii(texts: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(texts with every e-mail address and phone number masked, number of matches per text).

    Missing values stay missing; a text without a match comes back unchanged.
    """
    filled = texts.fillna("").astype(str)
    counts = filled.str.count(EMAIL) + filled.str.count(PHONE)
    masked = filled.str.replace(EMAIL, EMAIL_MASK, regex=True).str.replace(PHONE, PHONE_MASK, regex=True)
    out = texts.copy()
    hit = counts > 0
    out[hit] = masked[hit]
    return out, counts.astype(int)


def mask_pii(text: str) -> str:
    """One text with every e-mail address and phone number masked (as redact_pii masks each), without pandas."""
    return PHONE.sub(PHONE_MASK, EMAIL.sub(EMAIL_MASK, text))
