"""The web viewer's token: with one set, every request must carry it.

Three ways to carry it: ``?token=`` in the URL, ``Authorization: Bearer``, or the cookie the
page gets when opened with ``?token=`` (so its images, events and fetches need no token in
every URL). Compared in constant time; never logged.
"""

from __future__ import annotations

import hmac

from aiohttp import web

REFUSED = "this viewer needs its token: open it as http://HOST:PORT/?token=..."


def token_given(request: web.Request, token: str, cookie: str) -> bool:
    auth = request.headers.get("Authorization", "")
    offered = [
        request.query.get("token", ""),
        request.cookies.get(cookie, ""),
        auth[7:] if auth.startswith("Bearer ") else "",
    ]
    return any(o and hmac.compare_digest(o.encode(), token.encode()) for o in offered)


def token_middleware(token: str, cookie: str):
    """Refuses (401) every request without the token: JSON under /api/, a line of text elsewhere.
    With no token set, it lets everything through."""

    @web.middleware
    async def check_token(request: web.Request, handler):
        if token and not token_given(request, token, cookie):
            if request.path.startswith("/api/"):
                return web.json_response({"error": REFUSED}, status=401)
            return web.Response(status=401, text=REFUSED + "\n")
        return await handler(request)

    return check_token


def remember_token(
    response: web.StreamResponse, request: web.Request, token: str, cookie: str, *, secure: bool = False
) -> None:
    """On the page's response: the token of its URL as a cookie, for the requests the page makes
    (``secure``: over https, a cookie the browser never sends over plain http)."""
    if token and request.query.get("token"):
        response.set_cookie(
            cookie, request.query["token"], httponly=True, samesite="Strict", path="/", secure=secure or None
        )
