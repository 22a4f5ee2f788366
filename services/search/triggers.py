"""`encoders trigger add|list|remove`: the text triggers the core watches (services/metrics/triggers.py).

A sentence is embedded here, with CLIP's text tower of the encoder's model, by a machine
that has it; the file then goes to the core (ENCODERS_TRIGGERS), which needs no model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from encoders.services.metrics.triggers import NAME, Trigger, load, save
from encoders.shared.runtime import StartupError
from encoders.shared.settings import ModelSettings, setting

from .query import QueryEmbedder, QueryError


@dataclass
class TriggerConfig(ModelSettings):
    triggers: str = setting("triggers.json", "The triggers file (the core reads it as ENCODERS_TRIGGERS)")


def read(path: str) -> list[Trigger]:
    return load(path) if Path(path).exists() else []


def add(cfg: TriggerConfig, name: str, text: str, threshold: float) -> int:
    """Embed ``text`` and keep it as trigger ``name`` (replacing one of that name); 0, or 2 saying why not."""
    if not NAME.fullmatch(name):
        print(f"encoders trigger add: the name {name!r} must be 1-48 of A-Z a-z 0-9 _ . -", file=sys.stderr)
        return 2
    try:
        triggers = [t for t in read(cfg.triggers) if t.name != name]
        embedder = QueryEmbedder(cfg.model, cfg.pretrained, "cpu")
        vector = embedder.text(text)
        triggers.append(Trigger(name, text, embedder.label, threshold, vector))
        save(cfg.triggers, triggers)
    except (StartupError, QueryError, OSError) as exc:
        print(f"encoders trigger add: {exc}", file=sys.stderr)
        return 2
    print(f"trigger {name!r} ({embedder.label}, threshold {threshold:g}) in {cfg.triggers}; "
          f"the core reads it with ENCODERS_TRIGGERS={cfg.triggers} when it starts")  # fmt: skip
    return 0


def show(cfg: TriggerConfig) -> int:
    try:
        triggers = read(cfg.triggers)
    except StartupError as exc:
        print(f"encoders trigger list: {exc}", file=sys.stderr)
        return 2
    for t in triggers:
        print(f"{t.name}\t{t.threshold:g}\t{t.model}\t{t.text}")
    return 0


def remove(cfg: TriggerConfig, name: str) -> int:
    try:
        triggers = read(cfg.triggers)
        if name not in {t.name for t in triggers}:
            print(f"encoders trigger remove: no trigger {name!r} in {cfg.triggers}", file=sys.stderr)
            return 2
        save(cfg.triggers, [t for t in triggers if t.name != name])
    except (StartupError, OSError) as exc:
        print(f"encoders trigger remove: {exc}", file=sys.stderr)
        return 2
    return 0
