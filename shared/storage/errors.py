"""What can go wrong with the database, said in one line that never shows a password."""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from encoders.shared.masking import mask


class DatabaseUnavailable(RuntimeError):
    """The server cannot be reached now; worth trying again later."""


class DatabaseRefused(RuntimeError):
    """The database refuses what is asked (a frames table for another embedding size, a constraint, a newer
    schema); trying again will not help."""


def describe_target(url: str) -> str:
    """'host=db port=5432 database=encoders user=me' for messages: never the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:  # its message quotes the whole URL, password included
        return "an unparsable database URL (not shown: it may hold a password)"
    return (
        f"host={info.get('host') or 'localhost'} port={info.get('port') or 5432} "
        f"database={info.get('dbname') or info.get('user') or '(default)'} user={info.get('user') or '(default)'}"
    )


def one_line(exc: BaseException, url: str = "") -> str:
    """An exception as the first line of its message, with the URL's password (if any) masked.

    libpq's messages run over several lines (DETAIL, HINT) and some quote the connection
    string; a log line or a command's error needs the first line, safe to show.
    """
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if url and url in line:  # libpq quotes a URL it cannot parse, whole
        line = line.replace(url, "(the database URL)")
    return mask(line, password=_password(url))


def _password(url: str) -> str:
    try:
        return str(conninfo_to_dict(url).get("password") or "")
    except psycopg.Error:
        return ""
