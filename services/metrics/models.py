"""The one model a pipeline embeds with, and the length of its vectors (docs/PROTOCOL.md, "Workers").

Every stored embedding of a pipeline must be comparable with every other: one model, one
length. The database's column type (``vector(512)``) is fixed by the first rows written, so
a single vector of another length, from a buggy worker or from an honest one running
another model, would decide it for good, and every later record of the run would be
refused. So the core fixes the pair before any result arrives: from its settings
(``ENCODERS_PIPELINE_MODEL``, ``ENCODERS_PIPELINE_DIM``) or, where they are empty, from the
first worker's Hello (each worker names its model and its vectors' length). A worker whose
Hello names another is refused; a result of another model or length from a welcomed worker
is refused too: its frame counts as skipped, the worker is counted and told (its session is
ended with the reason, and it exits).
"""

from __future__ import annotations

import logging

from encoders.shared.messages import Hello, Results

log = logging.getLogger("encoders.metrics")


class PipelineModel:
    def __init__(self, model: str = "", dim: int = 0) -> None:
        self.model, self.dim = model, dim
        self.configured = bool(model), bool(dim)  # from the settings: said so in refusals
        self.refused_results: dict[str, int] = {}  # per worker name: results of another model or length

    def refusal(self, hello: Hello) -> str | None:
        """Why a worker with this Hello cannot embed for this pipeline, or None."""
        theirs = f"{hello.model} ({hello.dim} floats)"
        if self.model and hello.model != self.model:
            return f"this pipeline embeds with {self.described()}, {self._whence()}; this worker's model is {theirs}"
        if self.dim and hello.dim != self.dim:
            return f"this pipeline's embeddings are {self.described()}, {self._whence()}; this worker's are {theirs}"
        return None

    def join(self, hello: Hello) -> None:
        """A welcomed worker: the first fixes what the settings left open."""
        if self.model and self.dim:
            return
        self.model = self.model or hello.model
        self.dim = self.dim or hello.dim
        log.info("this pipeline embeds with %s, as worker %s said: workers of another are refused", self.described(),
                 hello.name)  # fmt: skip

    def results_problem(self, hello: Hello, results: Results) -> str | None:
        """Why a worker's embeddings cannot be recorded (not the model or length it said), or None.
        Once per Results: its model and its vectors' length are the whole batch's."""
        embedded = results.vector_rows()
        if not embedded:
            return None
        size = int(results.vectors.shape[1])
        if results.model != hello.model or size != hello.dim:
            self.refused_results[hello.name] = self.refused_results.get(hello.name, 0) + embedded
            return (
                f"embeddings of {results.model} ({size} floats) from a worker that said {hello.model} "
                f"({hello.dim} floats): not recorded"
            )
        return None

    def described(self) -> str:
        return f"{self.model or '?'} ({self.dim or '?'} floats)"

    def _whence(self) -> str:
        if all(self.configured):
            return "as ENCODERS_PIPELINE_MODEL and ENCODERS_PIPELINE_DIM say"
        return "as its first worker said (a core started again takes the next first worker's)"
