"""Text triggers: a saved sentence ("a person at the door") that raises an alert when a frame
comes near it.

`encoders trigger add NAME "TEXT"` embeds the sentence with the encoder's model (CLIP's text
tower: the core has no model of its own) and keeps it in a JSON file, ``ENCODERS_TRIGGERS``,
which the core reads at start:

    {"triggers": [{"name": "door", "text": "a person at the door", "model": "ViT-B-32/openai",
                   "threshold": 0.25, "vector": [...]}]}

For each record of a frame embedded with that model, the core takes the cosine of the frame
and the sentence; when it rises to ``threshold`` the record carries the event
``trigger:NAME`` (its value: the similarity). One visit gives one event: the trigger is armed
again only after the similarity has stayed below its threshold for ``holdoff`` seconds of
capture time. Per stream and epoch, as the other alerts.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encoders.shared.runtime import StartupError

NAME = re.compile(r"[A-Za-z0-9_.-]{1,48}")  # "trigger:" + NAME is an event kind (at most 64)


@dataclass(frozen=True)
class Trigger:
    name: str
    text: str
    model: str  # the label of the model that embedded it: only frames of that model are compared
    threshold: float
    vector: np.ndarray = field(repr=False)

    @property
    def kind(self) -> str:
        return f"trigger:{self.name}"

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "text": self.text,
            "model": self.model,
            "threshold": self.threshold,
            "vector": [round(float(x), 7) for x in self.vector],
        }


def load(path: str | Path) -> list[Trigger]:
    """The triggers in ``path``; StartupError saying what is wrong with the file."""
    try:
        data = json.loads(Path(path).read_text())
        out = []
        for t in data["triggers"]:
            vector = np.asarray(t["vector"], np.float32)
            norm = float(np.linalg.norm(vector))
            threshold = float(t["threshold"])
            if not NAME.fullmatch(str(t["name"])) or vector.ndim != 1 or not vector.size or not math.isfinite(norm):
                raise ValueError(f"trigger {str(t.get('name'))[:48]!r}: a name of 1-48 of A-Z a-z 0-9 _ . -, a vector")
            if not -1.0 <= threshold <= 1.0 or norm == 0.0:
                raise ValueError(f"trigger {t['name']!r}: a threshold within [-1, 1] and a vector that is not zero")
            out.append(Trigger(str(t["name"]), str(t["text"]), str(t["model"]), threshold, vector / norm))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StartupError(f"ENCODERS_TRIGGERS={path}: {exc}") from None
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise StartupError(f"ENCODERS_TRIGGERS={path}: a name used twice")
    return out


def save(path: str | Path, triggers: list[Trigger]) -> None:
    Path(path).write_text(json.dumps({"triggers": [t.to_json() for t in triggers]}, indent=1) + "\n")


@dataclass
class TriggerWatch:
    """One trigger on one stream's epoch: fires on the way up, re-armed after ``holdoff`` seconds below."""

    trigger: Trigger
    holdoff: float
    armed: bool = True
    below_since: float | None = None

    def on_frame(self, vector: np.ndarray, model: str, t_capture: float) -> float | None:
        """The similarity when this frame sets the trigger off, else None."""
        if model != self.trigger.model or vector.shape != self.trigger.vector.shape:
            return None
        similarity = float(np.dot(vector, self.trigger.vector))
        if similarity >= self.trigger.threshold:
            self.below_since = None
            if self.armed:
                self.armed = False
                return round(similarity, 6)
            return None
        if self.below_since is None:
            self.below_since = t_capture
        if not self.armed and t_capture - self.below_since >= self.holdoff:
            self.armed = True
        return None
