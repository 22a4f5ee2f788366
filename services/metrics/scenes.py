"""Which frames are scene changes: a drift that stands out, absolutely or from the recent window.

Two rules, either enough:

- threshold: drift >= ``threshold`` (a cut to another view, whatever came before);
- adaptive: drift > mean + ``k`` * std of the rolling window *before* this frame, once the
  window holds ``min_frames`` drifts, and only for a drift of at least ``min_drift``. The
  window excludes the frame itself so that a jump does not raise its own bar; the floor
  keeps a perfectly still scene (std near 0) from turning sensor noise into scene changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SceneRule:
    threshold: float = 0.0  # 0 = rule off
    k: float = 0.0  # 0 = rule off
    min_drift: float = 0.0
    min_frames: int = 2

    @classmethod
    def from_config(cls, cfg: Any) -> SceneRule:
        return cls(cfg.scene_threshold, cfg.scene_k, cfg.scene_min_drift, cfg.scene_min_frames)

    def is_change(self, drift: float | None, window: Mapping[str, Any]) -> bool:
        """``window``: DriftTracker.rolling() taken before this frame's drift was added."""
        if drift is None:
            return False
        if self.threshold > 0 and drift >= self.threshold:
            return True
        if self.k <= 0 or drift < self.min_drift or (window.get("count") or 0) < self.min_frames:
            return False
        return drift > window["mean"] + self.k * window["std"]
