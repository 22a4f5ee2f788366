"""`encoders search`'s settings (events and runs need only the database's)."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.shared.settings import ModelSettings, setting
from encoders.shared.storage.config import EF_SEARCH_MAX, SEARCH_EF, SEARCH_EF_TEXT, DatabaseConfig


@dataclass
class SearchConfig(DatabaseConfig, ModelSettings):
    """--text and --image are embedded with the encoder's model (ENCODERS_MODEL, ENCODERS_PRETRAINED)."""

    device: str = setting("cpu", "Where the query is embedded: auto, cpu, cuda or cuda:N")
    search_candidates: int = setting(
        10,
        "Segments of near-identical frames ranked frame by frame per query (at least -k); more finds more, slower",
        minimum=1,
    )
    search_ef: int = setting(
        SEARCH_EF,
        "hnsw.ef_search of an unfiltered --image or --frame query (a filtered one raises it with the filter's "
        "selectivity); more than pgvector's 40 keeps the greedy search from stranding in the wrong views; "
        f"at most {EF_SEARCH_MAX}",
        minimum=1,
        maximum=EF_SEARCH_MAX,
    )
    search_ef_text: int = setting(
        SEARCH_EF_TEXT,
        "hnsw.ef_search of a --text query: text embeddings lie far from every frame (cosine ~0.3), where the "
        "greedy search strands more easily (on 2M frames, benchmarks/RESULTS.md: keyframe recall@10 0.970 at 200, "
        f"0.995 at 400, 1.000 at 800, for about 4 ms more than 200); at most {EF_SEARCH_MAX}",
        minimum=1,
        maximum=EF_SEARCH_MAX,
    )
    search_exact_keyframes: int = setting(
        2000, "A filter that leaves at most this many keyframes is searched exactly, without the HNSW index", minimum=0
    )
