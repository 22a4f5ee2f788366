"""Secrets kept out of logs, messages and files: one function says how.

A setting's description (config.json, the start-up log), a camera's or a database's URL in a
log line, a database error, the pipeline's settings stored with a run, the URL `encoders db
serve` prints: each shows what it holds through ``mask``, so a password is hidden the same way
everywhere, as MASK.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
SECRET_WORDS = ("password", "secret", "token")  # a JSON key naming one of these holds a secret whole

_URL_PASSWORD = re.compile(r"(//[^:/@]*):[^@/]*@")  # scheme://user:secret@host
_CONNINFO_PASSWORD = re.compile(r"password\s*=\s*('(?:[^'\\]|\\.)*'|[^\s&]+)")  # password=secret, ?password=


def mask(text: str, *, password: str | None = None, whole: bool = False) -> str:
    """``text`` fit to be shown.

    - ``whole``: all of it is a secret (a token): MASK, unless it is empty;
    - ``password``: that password, wherever it appears (a message quoting it, a URL made with it),
      and nothing else ("": nothing);
    - neither: the password of every URL (user:secret@host) and key=value conninfo (password=secret,
      also ?password= in a URL's query) in it.
    """
    if whole:
        return MASK if text else text
    if password is not None:
        return text.replace(password, MASK) if password else text
    text = _URL_PASSWORD.sub(rf"\1:{MASK}@", text)
    return _CONNINFO_PASSWORD.sub(f"password={MASK}", text)


def mask_secrets(value: Any, key: str = "") -> Any:
    """JSON (settings) with every string masked: whole under a key naming a secret, else its URLs' passwords."""
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str):
        return mask(value, whole=any(word in key.lower() for word in SECRET_WORDS))
    return value
