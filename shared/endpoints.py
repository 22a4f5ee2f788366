"""The pipeline's well-known ports, and how a default address is written.

A service that binds listens on every interface by default (a viewer or a worker may be on
another machine); a service that connects defaults to this machine. docs/PROTOCOL.md says
which service binds which socket, and what travels over it.
"""

from __future__ import annotations

FRAMES_PORT = 5555  # ingest PUB: every frame (viewers, recorder)
WORK_PORT = 5556  # ingest ROUTER: frames handed to encoder workers by credit
METRICS_IN_PORT = 5557  # metrics PULL: embeddings from workers, notices from ingest
METRICS_PORT = 5558  # metrics PUB: records and stats (viewers)
RECORDS_PORT = 5559  # metrics PUSH: records for the recorder


def bind_all(port: int) -> str:
    return f"tcp://*:{port}"


def this_machine(port: int) -> str:
    return f"tcp://127.0.0.1:{port}"
