"""Text search over the stored embeddings: a sentence -> CLIP's text tower -> the nearest frames.

The query is pgvector's cosine distance on the recorder's ``frames`` table (its HNSW index
serves ``ORDER BY embedding <=> q``), restricted to runs embedded with the same model as
the text, since embeddings of two models are not comparable.

torch and open_clip are imported at the first search only, so a viewer without a database
needs neither. (A search service of the project's own, services/search, is being written
at the same time; when it lands, the web viewer can call it instead of this.)
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MAX_RESULTS = 50
CONNECT_TIMEOUT_S = 5

NEAREST = """
    SELECT r.name, f.run_id, f.stream, f.seq, f.captured_at, f.drift, f.snapshot_path,
           1 - (f.embedding <=> %(q)s) AS similarity
    FROM frames f JOIN runs r ON r.id = f.run_id
    WHERE r.model = %(model)s
    ORDER BY f.embedding <=> %(q)s
    LIMIT %(k)s"""

# A hit without a snapshot of its own is shown by the last snapshot of its stream before it
# (snapshots are taken every few seconds): the primary key (run_id, stream, seq) finds it.
SNAPSHOT_BEFORE = """
    SELECT seq, snapshot_path FROM frames
    WHERE run_id = %s AND stream = %s AND seq <= %s AND snapshot_path IS NOT NULL
    ORDER BY seq DESC LIMIT 1"""


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

    def __init__(self, database_url: str, model: str, pretrained: str, runs_dir: str) -> None:
        self.database_url = database_url
        self.model = model
        self.pretrained = pretrained
        self.runs_dir = Path(runs_dir)
        self._lock = threading.Lock()
        self._text = None  # (encode function, model label)

    def warm_up(self) -> str:
        return self._text_tower()[1]

    def embed(self, text: str) -> tuple[np.ndarray, str]:
        """The L2-normalised text embedding, and the model label the recorder stores in runs.model."""
        encode, label = self._text_tower()
        return encode(text), label

    def search(self, text: str, k: int = 12) -> tuple[list[Hit], str]:
        """The ``k`` frames nearest to ``text``, best first, and a note for the person (why none)."""
        text = text.strip()
        if not text:
            return [], "type what to look for"
        vector, label = self.embed(text)
        import psycopg
        from pgvector.psycopg import register_vector

        try:
            with psycopg.connect(self.database_url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                if not conn.execute("SELECT to_regclass('frames') IS NOT NULL").fetchone()[0]:
                    return [], "the database holds no frames yet"
                register_vector(conn)
                models = [m for (m,) in conn.execute("SELECT DISTINCT model FROM runs WHERE model IS NOT NULL")]
                if label not in models:
                    return [], (f"no frames embedded with {label} in this database (it has: "
                                f"{', '.join(sorted(models)) or 'none'}); set --model/--pretrained to match")
                rows = conn.execute(NEAREST, {"q": vector, "model": label, "k": max(1, min(k, MAX_RESULTS))}).fetchall()
                hits = [self._hit(conn, row) for row in rows]
        except psycopg.Error as exc:
            raise SearchError(f"database: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from None
        return hits, "" if hits else "no match"

    def _hit(self, conn, row) -> Hit:
        run, run_id, stream, seq, captured_at, drift, snapshot_path, similarity = row
        snapshot_seq = seq if snapshot_path else None
        if not snapshot_path:
            before = conn.execute(SNAPSHOT_BEFORE, (run_id, stream, seq)).fetchone()
            if before:
                snapshot_seq, snapshot_path = before
        snapshot = None
        if snapshot_path:
            path = self.runs_dir / run / snapshot_path
            snapshot = path if path.is_file() else None
        return Hit(run, stream, int(seq), captured_at.isoformat() if captured_at else None, float(similarity),
                   None if drift is None else float(drift), snapshot, snapshot_seq if snapshot else None)

    def _text_tower(self):
        with self._lock:
            if self._text is None:
                self._text = self._load()
            return self._text

    def _load(self):
        try:
            import open_clip
            import torch

            from encoders.services.encoder.model import ModelLoadError, load_encoder
        except ImportError as exc:
            raise SearchError(f"search needs torch and open_clip (pip install 'encoders[viewer-search]'): "
                              f"{exc}") from None
        log.info("loading the text tower of %s (%s) for search", self.model, self.pretrained)
        try:
            clip = load_encoder(self.model, self.pretrained, "cpu")
        except ModelLoadError as exc:
            raise SearchError(str(exc)) from None
        tokenizer = open_clip.get_tokenizer(clip.name.split("/")[0])

        @torch.inference_mode()
        def encode(text: str) -> np.ndarray:
            features = clip.model.encode_text(tokenizer([text]))
            return torch.nn.functional.normalize(features.float(), dim=-1)[0].numpy().astype(np.float32)

        log.info("search ready: %s", clip.name)
        return encode, clip.name
