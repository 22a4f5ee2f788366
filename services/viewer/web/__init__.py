"""The web viewer: the page, the video as MJPEG, live numbers as Server-Sent Events, JSON.

aiohttp, on a thread and event loop of its own. It reads only the board (../latest.py) that
the viewer's main loop writes through the feed (../feed.py): every client takes the newest
value when it is ready for one, so a slow browser skips frames here, alone, and nothing
upstream ever waits for it.

- routes.py: the routes (their table is in its docstring) and their handlers;
- auth.py: the token every request must carry when one is set, and the page's cookie;
- clients.py: who is connected, and what each was sent and skipped;
- thumbnails.py: search results' thumbnails, by opaque id;
- formats.py: the bytes written (MJPEG parts, Server-Sent Events, JSON without NaN);
- server.py: the server's thread, start and stop.

The page itself is ../static/ (plain HTML, CSS and JS, no build step).
"""

from .routes import WebApp
from .server import WebServer

__all__ = ["WebApp", "WebServer"]
