"""Where the embeddings are stored, and how searches over them are tuned: settings several commands share."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.shared.settings import Settings, setting

# hnsw.ef_search of searches (benchmarks/RESULTS.md): sentences lie far from every frame and
# need a wider search than pictures and frames. The command line and the web viewer share them.
SEARCH_EF = 400
SEARCH_EF_TEXT = 800
EF_SEARCH_MAX = 1000  # pgvector's upper bound for hnsw.ef_search
RUNS_DIR = "runs"  # where run folders (and the embedded database) go, unless told otherwise


@dataclass
class DatabaseConfig(Settings):
    """The recorder writes here; search, events, runs and the web viewer read from here."""

    database_url: str = setting(
        "",
        "PostgreSQL URL, e.g. postgresql://user:pass@host/db; empty = an embedded server under the runs folder",
        secret="url",
    )
    runs_dir: str = setting(RUNS_DIR, "Folder that holds one folder per run (and the embedded database)")


@dataclass
class ServeConfig(DatabaseConfig):
    """`encoders db serve`: the embedded database kept up, and optionally reachable from other machines."""

    db_listen: str = setting(
        "",
        "Also listen on TCP at HOST:PORT (e.g. 0.0.0.0:5432) for recorders, search and psql on other machines; "
        "TCP connections need the password. For a quick test: a networked PostgreSQL is the path for a pipeline "
        "on several machines",
    )
    db_password: str = setting(
        "",
        "The password TCP connections need (user postgres); empty = a new random one, printed at start. "
        "Prefer the variable: a flag shows in the process list",
        secret="value",
    )
