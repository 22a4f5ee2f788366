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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from encoders.shared.storage.config import SEARCH_EF_TEXT

if TYPE_CHECKING:  # psycopg and torch are imported by the first search
    from encoders.services.search.query import QueryEmbedder
    from encoders.shared.storage.store import Hit

log = logging.getLogger(__name__)

MAX_RESULTS = 50


class SearchError(RuntimeError):
    """The search could not run (database unreachable, model not loadable); the message says why."""


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
        self._embedder: QueryEmbedder | None = None

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
        """The ``k`` frames nearest to ``text``, best first, and a note for the person (why none).

        A hit's snapshot is kept only if it is a file on this machine (the page shows it).
        """
        text = text.strip()
        if not text:
            return [], "type what to look for"
        vector, label = self.embed(text)
        import psycopg

        from encoders.shared.storage.errors import DatabaseUnavailable, one_line
        from encoders.shared.storage.filters import Filters
        from encoders.shared.storage.store import StoreError, reading

        try:
            with reading(self.database_url, self.runs_dir) as store:
                if not store.has_frames():
                    return [], "the database holds no frames yet"
                filters, _ = store.restrict_to_model(label, Filters())
                result = store.nearest(vector, max(1, min(k, MAX_RESULTS)), filters, ef_search=self.ef_search)
                store.load_thumbnails(result.hits)  # each hit's own picture, not the nearest snapshot
        except StoreError as exc:
            return [], str(exc)
        except DatabaseUnavailable as exc:
            raise SearchError(f"database: {exc}") from None
        except psycopg.Error as exc:
            raise SearchError(f"database: {one_line(exc, self.database_url)}") from None
        for hit in result.hits:
            if not (hit.snapshot and Path(hit.snapshot).is_file()):
                hit.snapshot = hit.snapshot_seq = None
        return result.hits, "" if result.hits else "no match"

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
