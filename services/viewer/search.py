"""Text search for the web viewer: a sentence -> CLIP's text tower -> the nearest stored frames.

The same search as `encoders search --text`: services/search embeds the query with the
encoder's own model (QueryEmbedder) and ranks frames through the keyframe index (Store),
restricted to runs embedded with that model, since embeddings of two models are not
comparable. This module only adapts its answers to the page.

torch and open_clip are imported at the first search only, so a viewer without a database
needs neither.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoders.shared.storage.config import SEARCH_EF_TEXT

log = logging.getLogger(__name__)

MAX_RESULTS = 50
CONNECT_TIMEOUT_S = 5


class SearchError(RuntimeError):
    """The search could not run (database unreachable, model not loadable); the message says why."""


@dataclass(frozen=True)
class Hit:
    run: str
    stream: str
    seq: int
    captured_at: str | None  # ISO 8601
    similarity: float
    drift: float | None
    snapshot: Path | None  # the frame's snapshot, or the last one of its stream before it
    snapshot_seq: int | None  # which frame that snapshot shows


class TextSearch:
    """Thread-safe; the model is loaded by the first search (or ``warm_up``) and kept."""

    def __init__(
        self, database_url: str, model: str, pretrained: str, runs_dir: str, *, ef_search: int = SEARCH_EF_TEXT
    ) -> None:
        self.database_url = database_url
        self.ef_search = ef_search  # hnsw.ef_search: a sentence lies far from every frame
        self.runs_dir = Path(runs_dir)
        self.model, self.pretrained = model, pretrained
        self._lock = threading.Lock()
        self._embedder = None

    def warm_up(self) -> str:
        return self._query_embedder().label

    def embed(self, text: str) -> tuple[np.ndarray, str]:
        """The L2-normalised text embedding, and the model label the recorder stores in runs.model."""
        from encoders.services.search.query import QueryError

        embedder = self._query_embedder()
        try:
            with self._lock:
                return embedder.text(text), embedder.label
        except QueryError as exc:
            raise SearchError(str(exc)) from None

    def search(self, text: str, k: int = 12) -> tuple[list[Hit], str]:
        """The ``k`` frames nearest to ``text``, best first, and a note for the person (why none)."""
        text = text.strip()
        if not text:
            return [], "type what to look for"
        vector, label = self.embed(text)
        import psycopg
        from pgvector.psycopg import register_vector

        from encoders.services.search.filters import Filters
        from encoders.services.search.store import Store, StoreError

        try:
            with psycopg.connect(self.database_url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                if not conn.execute("SELECT to_regclass('frames') IS NOT NULL").fetchone()[0]:
                    return [], "the database holds no frames yet"
                register_vector(conn)
                store = Store(conn, self.runs_dir)
                filters, _ = store.restrict_to_model(label, Filters())
                result = store.nearest(vector, max(1, min(k, MAX_RESULTS)), filters, ef_search=self.ef_search)
        except StoreError as exc:
            return [], str(exc)
        except psycopg.Error as exc:
            raise SearchError(f"database: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from None
        hits = [
            Hit(
                h.run,
                h.stream,
                h.seq,
                h.captured_at.isoformat() if h.captured_at else None,
                h.similarity,
                h.drift,
                _existing(h.snapshot),
                h.snapshot_seq if _existing(h.snapshot) else None,
            )
            for h in result.hits
        ]
        return hits, "" if hits else "no match"

    def _query_embedder(self):
        with self._lock:
            if self._embedder is None:
                try:
                    from encoders.services.search.query import QueryEmbedder
                except ImportError as exc:
                    raise SearchError(
                        f"search needs torch and open_clip (pip install 'encoders[viewer-search]'): {exc}"
                    ) from None
                log.info("loading the text tower of %s (%s) for search", self.model, self.pretrained)
                self._embedder = QueryEmbedder(self.model, self.pretrained, "cpu")
            return self._embedder


def _existing(path: str | None) -> Path | None:
    return Path(path) if path and Path(path).is_file() else None
