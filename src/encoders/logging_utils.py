"""The seed's import path for reading a run back: ``from encoders.logging_utils import load_run_embeddings``.

The run files are written by the recorder service; this module only keeps the old name working.
"""

from encoders.services.recorder.runfiles import load_run_embeddings

__all__ = ["load_run_embeddings"]
