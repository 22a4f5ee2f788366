"""Small JPEG thumbnails of embedded frames, stored with their rows so a search hit has a picture.

The worker makes them now, from the picture it decoded anyway (docs/PROTOCOL.md, Workers),
and each record carries its frame's (``MetricsRecord.thumbnail``, empty when none was
made); the recorder only decides which rows keep theirs (``wanted``).

Why in the database (a bytea column, kept out of line) rather than files in the run
folder: a thumbnail per frame at 30 frames/s is millions of tiny files a day; in the row
it travels the same way as the embedding (COPY, the spool while the database is away,
ON CONFLICT on replay), so it is never lost or orphaned, and a search run on another
machine gets the picture from the database without reaching the run folder.
"""

from __future__ import annotations

CHOICES = ("all", "keyframes", "none")


def wanted(which: str, keyframe: bool) -> bool:
    """Whether a frame gets a thumbnail under the ``thumbnails`` setting."""
    return which == "all" or (which == "keyframes" and keyframe)
