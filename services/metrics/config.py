"""The metrics service's settings: the core every other service connects to (docs/PROTOCOL.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from encoders.shared.endpoints import CORE_PORT, FRAMES_PORT, METRICS_PORT, bind_loopback
from encoders.shared.settings import Exported, FrameBytes, SessionSettings, StreamDown, setting

# The frames publisher's queue for each subscriber is counted in messages (ZeroMQ's high-water
# mark, 1,000 unless set: 1.36 GB of 1 MB frames for one viewer that stopped reading, issue #22);
# its budget is in bytes, turned into messages at one frame per MB. 1 MB is a large frame (a 4K
# camera's JPEG is 1-2 MB, 1080p's 0.3-0.6 MB, VGA's 30-60 KB): up to that size the budget
# holds, and with smaller frames the queue is longer in time, not in memory.
FRAME_BUDGET_BYTES = 1 << 20
# Whatever the budget, at least this many: a shorter queue would drop frames at every hiccup of
# a viewer that does keep up (every camera's frames and Stats share it).
FRAMES_HWM_MIN = 16


def frames_hwm(buffer_mb: int) -> int:
    """The frames publisher's SNDHWM (messages per subscriber) for a budget of ``buffer_mb`` MB."""
    return max(FRAMES_HWM_MIN, buffer_mb * 2**20 // FRAME_BUDGET_BYTES)


def default_state_dir() -> str:
    """$XDG_STATE_HOME/encoders, else ~/.local/state/encoders: the core's numbering and its spool."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "encoders")


@dataclass
class MetricsConfig(StreamDown, SessionSettings, FrameBytes, Exported):
    core_bind: str = setting(
        bind_loopback(CORE_PORT),
        "ROUTER endpoint every service connects to (ENCODERS_CORE on the others): ingests, workers, the "
        "recorder, viewers, `encoders stop`. For other machines: tcp://*:5556, with --keys (or --insecure)",
    )
    frames_bind: str = setting(bind_loopback(FRAMES_PORT), "XPUB endpoint of the previews of the streams viewers watch")
    frames_buffer_mb: int = setting(
        64,
        "Memory the frames publisher holds at most for one subscriber that does not keep up (a paused viewer), "
        f"in MB: a queue of that many frames (a frame counted as 1 MB, a large one; at least {FRAMES_HWM_MIN}); "
        "past it that subscriber misses frames, and nobody else is slowed",
        minimum=1,
    )
    metrics_bind: str = setting(
        bind_loopback(METRICS_PORT), "PUB endpoint of records, stream starts and ends, stats (viewers)"
    )
    preview_fps: float = setting(
        10.0,
        "Pictures a second of each stream someone watches (a subscriber of frame/STREAM on the frames publisher), "
        "asked of its ingest and published; unwatched streams send none (0: no previews at all)",
        minimum=0,
        maximum=1000,
    )
    # keys, heartbeat_s, heartbeat_misses: the same on both ends of a session (settings.SessionSettings)
    insecure: bool = setting(
        False,
        "Bind beyond loopback without keys: anyone who reaches these ports can read the frames and pose as any "
        "service (a network you trust only; said at every start)",
    )
    state_dir: str = setting(
        default_state_dir(),
        "Folder of the core's state: each stream's reserved frame numbers (so a restart never reuses one) and "
        "its spool of records the recorder has not taken",
    )
    recorder: bool = setting(
        True,
        "Hold every record until a recorder acknowledges it (--no-recorder: records are only published, as the "
        "all-in-one does with --no-save)",
    )
    hold_records: int = setting(
        100_000,
        "Records held in memory for the recorder until it acknowledges them (about 2 KB each, plus the "
        "thumbnail a worker made: a few KB); past it the oldest go to the spool in --state-dir",
        minimum=1,
    )
    pipeline_model: str = setting(
        "",
        "The model every worker must embed with, as workers name it (e.g. ViT-B-32/openai); empty: the first "
        "worker's. A worker of another is refused: one table cannot hold two kinds of vectors",
    )
    pipeline_dim: int = setting(
        0, "The length of the pipeline's embeddings (512 for ViT-B-32); 0: the first worker's", minimum=0
    )
    max_streams: int = setting(64, "Streams at once; a camera's Hello beyond it is refused, counted", minimum=1)
    max_pending: int = setting(
        10_000,
        "Outcomes of one stream waiting for a missing one; past it the oldest gaps are given up as lost",
        minimum=10,
    )
    rolling_window: int = setting(300, "Drift history size (frames) for rolling statistics", minimum=2)
    max_wait: float = setting(
        10.0,
        "Seconds an outcome waits behind a missing one before every such gap is given up as lost (a batch on a "
        "slow CPU takes seconds: keep this above one batch's time)",
        minimum=0.0,
    )
    frozen_after: float = setting(
        60.0,
        "Alert 'frozen' when frames keep coming but the picture has not changed (drift <= --frozen-drift) for this "
        "many seconds: a stuck camera, a replayed image (0 = off)",
        minimum=0.0,
    )
    frozen_drift: float = setting(0.0005, "Drift at most this counts as no change, for the frozen alert", minimum=0.0)
    blackout_contrast: float = setting(
        6.0,
        "Alert 'blackout' when a picture is nearly uniform, its contrast (largest channel standard deviation, 0-255) "
        "under this: dark, white or one colour, a covered lens (0 = off)",
        minimum=0.0,
        maximum=255.0,
    )
    # stream_down_after: 'stream_back' on the first frame after none for that long (settings.StreamDown)
    max_clock_skew: float = setting(
        5.0,
        "Warn (once per stream) when a capture's time, on its ingest's clock, is this many seconds ahead of the "
        "core's clock, or behind it for every capture for a while: its frames are stored at the wrong time "
        "(0 = off)",
        minimum=0.0,
    )
    triggers: str = setting(
        "", "File of text triggers made by `encoders trigger add`: an alert when a frame comes near a sentence"
    )
    trigger_holdoff: float = setting(
        60.0, "A trigger fires again only after its similarity stayed below its threshold this many seconds", minimum=0
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
