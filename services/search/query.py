"""A sentence or a picture -> a query embedding, with the encoder's own model.

The model is loaded with the encoder's loading code (``load_encoder``: same name, weights
and preprocessing as the encoder service), so a query lands in the same space as the
stored frames; its label ("ViT-B-32/openai") is what the recorder stores as runs.model.
open_clip's tokenizer ships its vocabulary: text queries work offline.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported by the first query that needs the model
    from encoders.services.encoder.model import ClipImageEncoder

log = logging.getLogger(__name__)


class QueryError(RuntimeError):
    """The query cannot be embedded (model not loadable, image unreadable); the message says why."""


class QueryEmbedder:
    def __init__(self, model: str, pretrained: str, device: str):
        self.model_name, self.pretrained, self.device = model, pretrained, device
        self._clip: ClipImageEncoder | None = None

    @property
    def clip(self) -> ClipImageEncoder:
        if self._clip is None:
            try:
                from encoders.services.encoder.model import ModelLoadError, load_encoder
            except ImportError as exc:
                raise QueryError(
                    f"--text and --image need torch and open_clip (pip install 'encoders[encoder]'): {exc}"
                ) from None
            try:
                self._clip = load_encoder(self.model_name, self.pretrained, self.device)
            except ModelLoadError as exc:
                raise QueryError(str(exc)) from None
        return self._clip

    @property
    def label(self) -> str:
        """The model as runs.model names it."""
        return self.clip.name

    def text(self, text: str) -> np.ndarray:
        import open_clip
        import torch

        if not text.strip():
            raise QueryError("--text is empty: say what to look for")
        clip = self.clip
        tokenizer = open_clip.get_tokenizer(clip.name.split("/")[0])
        with torch.inference_mode():
            features = clip.model.encode_text(tokenizer([text]).to(clip.device))
            return torch.nn.functional.normalize(features.float(), dim=-1)[0].cpu().numpy().astype(np.float32)

    def image(self, path: str | Path) -> np.ndarray:
        from encoders.services.encoder.preprocess import CorruptFrame

        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise QueryError(f"--image {path}: {exc.strerror or exc}") from None
        clip = self.clip
        try:
            array = clip.pre.load(data)  # the encoder service's decoding, resizing and cropping
        except CorruptFrame as exc:
            raise QueryError(f"--image {path} is not an image this can read: {exc}") from None
        return clip.embed_arrays([array])[0].astype(np.float32)
