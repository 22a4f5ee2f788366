"""Alerts computed from what each frame's record measures: a frozen feed, a blackout.

What no camera pipeline peer offers: events read from the embeddings themselves. Per stream
and epoch (an epoch's start resets them, as it resets drift):

- frozen: frames keep coming but the picture has not changed, drift at most ``frozen_drift``
  for ``frozen_after`` seconds of capture time (a stuck camera, a replayed image). Said once,
  with the seconds it has been still; said again only after the picture has moved.
- trigger:NAME: a saved sentence the frame came near (triggers.py), once per visit.
- stream_back: the first frame after no frame for ``stream_down_after`` seconds of capture time (the
  camera stalled, or its ingest was cut off and came back): its value, the seconds without.
  Kept across epochs; the recorder says "stream_down" live, when the records stop (notify.py).
- blackout: the picture has become nearly uniform, its contrast (the largest standard
  deviation of its colour channels, measured by the worker) under ``blackout_contrast``
  levels: dark, white or one colour (a covered lens, a feed gone black). Said once, with the
  contrast; again only after a picture with contrast.

The record of the frame that sets one off carries it (``MetricsRecord.events``): viewers see
it live, the recorder stores it in the events table. A scene change stays its own field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .triggers import Trigger, TriggerWatch
from .triggers import load as load_triggers


@dataclass(frozen=True)
class AlertRules:
    frozen_after: float = 0.0  # seconds; 0 = off
    frozen_drift: float = 0.0005
    blackout_contrast: float = 0.0  # levels; 0 = off
    triggers: tuple[Trigger, ...] = ()  # saved sentences (triggers.py)
    trigger_holdoff: float = 60.0
    stream_down_after: float = 0.0  # a gap in capture times this long is a stream that was down; 0 = off

    @classmethod
    def from_config(cls, cfg: Any) -> AlertRules:
        """The core's rules; StartupError when ENCODERS_TRIGGERS names a file that does not read."""
        triggers = tuple(load_triggers(cfg.triggers)) if cfg.triggers else ()
        return cls(
            cfg.frozen_after,
            cfg.frozen_drift,
            cfg.blackout_contrast,
            triggers,
            cfg.trigger_holdoff,
            cfg.stream_down_after,
        )


@dataclass
class Alerts:
    """One stream's epoch: what it has said, and since when its picture has been still."""

    rules: AlertRules
    still_since: float | None = None  # capture time of the first frame of the still run
    frozen: bool = False
    dark: bool = False
    watches: list[TriggerWatch] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.watches = [TriggerWatch(t, self.rules.trigger_holdoff) for t in self.rules.triggers]

    def on_record(
        self,
        t_capture: float,
        drift: float | None,
        contrast: float | None,
        vector: np.ndarray | None = None,
        model: str = "",
    ) -> dict[str, float | None]:
        """The events this frame sets off: kind -> the value measured."""
        events: dict[str, float | None] = {}
        if vector is not None:
            for watch in self.watches:
                similarity = watch.on_frame(vector, model, t_capture)
                if similarity is not None:
                    events[watch.trigger.kind] = similarity
        rules = self.rules
        if rules.frozen_after > 0:
            if drift is None:  # the epoch's first frame: the still run starts here
                self.still_since = t_capture
            elif drift <= rules.frozen_drift:
                if self.still_since is None:
                    self.still_since = t_capture
                still = t_capture - self.still_since
                if not self.frozen and still >= rules.frozen_after:
                    self.frozen = True
                    events["frozen"] = round(still, 3)
            else:
                self.still_since, self.frozen = t_capture, False
        if rules.blackout_contrast > 0 and contrast is not None:
            if contrast < rules.blackout_contrast:
                if not self.dark:
                    self.dark = True
                    events["blackout"] = round(contrast, 3)
            else:
                self.dark = False
        return events


def stream_back(rules: AlertRules, previous: float | None, t_capture: float) -> dict[str, float | None]:
    """The stream_back event of a frame captured ``t_capture - previous`` seconds after the one before."""
    if rules.stream_down_after > 0 and previous is not None and t_capture - previous >= rules.stream_down_after:
        return {"stream_back": round(t_capture - previous, 3)}
    return {}
