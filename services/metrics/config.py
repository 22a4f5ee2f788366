"""The metrics service's settings."""

from __future__ import annotations

from dataclasses import dataclass

from encoders.shared.endpoints import METRICS_IN_PORT, METRICS_PORT, RECORDS_PORT, bind_all
from encoders.shared.settings import Settings, setting


@dataclass
class MetricsConfig(Settings):
    metrics_in_bind: str = setting(bind_all(METRICS_IN_PORT), "PULL endpoint for embeddings and ingest notices")
    metrics_bind: str = setting(bind_all(METRICS_PORT), "PUB endpoint for metrics records (viewers)")
    records_bind: str = setting(
        bind_all(RECORDS_PORT), "PUSH endpoint for the recorder: reliable, never dropped ('none' = no recorder)"
    )
    rolling_window: int = setting(300, "Drift history size (frames) for rolling statistics", minimum=2)
    max_wait: float = setting(
        10.0,
        "Seconds to wait for a missing frame before giving it up as lost (a batch on a slow CPU takes seconds: "
        "keep this above one batch's time)",
        minimum=0.0,
    )
    scene_threshold: float = setting(
        0.25, "A frame whose drift is at least this is a scene change (0 = off)", minimum=0.0
    )
    scene_k: float = setting(
        6.0,
        "Adaptive scene-change rule: drift above the mean + K standard deviations of the rolling window before "
        "the frame (0 = off)",
        minimum=0.0,
    )
    scene_min_drift: float = setting(
        0.05,
        "The adaptive rule ignores drifts below this (in a still scene a tiny spread would make noise a scene change)",
        minimum=0.0,
    )
    scene_min_frames: int = setting(30, "The adaptive rule waits until the window holds this many drifts", minimum=2)
    exit_after_streams: int = setting(0, "Exit once this many streams have ended (0 = run until stopped)", minimum=0)
