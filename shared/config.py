"""Every setting of every service, in one place.

Each service has a dataclass. Each field is declared once with ``setting(...)`` and
becomes, without further code:

- a click option ``--field-name`` (``--x/--no-x`` for booleans),
- an environment variable ``ENCODERS_FIELD_NAME`` (the seed's names are kept:
  ENCODERS_DEVICE, ENCODERS_MODEL, ENCODERS_PRETRAINED, ENCODERS_SNAPSHOT_INTERVAL,
  ENCODERS_EMBEDDING_INTERVAL, ENCODERS_ROLLING_WINDOW),
- a line in the start-up log and in the run's config.json (passwords masked).

Fields shared by several services (an address, the model) have the same name and so
the same variable: in docker-compose one variable configures both ends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import click

ENV_PREFIX = "ENCODERS_"
# hnsw.ef_search of searches (benchmarks/RESULTS.md): sentences lie far from every frame and
# need a wider search than pictures and frames. The command line and the web viewer share them.
SEARCH_EF = 400
SEARCH_EF_TEXT = 800
# The recorder's database writer: rows that gather while a batch is being written go out with
# the next one, up to this many --db-batch's worth; then the receive loop waits.
DB_MAX_WAITING_BATCHES = 8


def setting(
    default: Any,
    help: str,
    *,
    env: str | None = None,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    flag: str | None = None,
    secret: bool = False,
) -> Any:
    meta = {"help": help, "env": env, "choices": choices, "minimum": minimum, "flag": flag, "secret": secret}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def env_name(f: dataclasses.Field) -> str:
    return f.metadata.get("env") or ENV_PREFIX + f.name.upper()


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


class SettingsError(click.UsageError):
    pass


@dataclass
class Settings:
    """Base of every service's settings: loading, validation, description."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            lo = f.metadata.get("minimum")
            if lo is not None and value < lo:
                raise SettingsError(f"{flag_name(f)} / {env_name(f)} must be >= {lo}, got {value}")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise SettingsError(
                    f"{flag_name(f)} / {env_name(f)} must be one of {', '.join(choices)}, got {value!r}"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any):
        """Build from ENCODERS_* variables (for the all-in-one launcher), then overrides."""
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(env_name(f))
            if raw is not None and raw != "":
                values[f.name] = _parse(hints[f.name], raw, env_name(f))
        values.update(overrides)
        return cls(**values)

    def describe(self) -> dict[str, Any]:
        """Settings as plain JSON-able values, secrets masked."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and isinstance(value, str):
                value = mask_url(value)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_env(self) -> dict[str, str]:
        """Settings as ENCODERS_* variables, to hand to a child process."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                out[env_name(f)] = "true" if value else "false"
            elif isinstance(value, tuple):
                out[env_name(f)] = " ".join(value)
            else:
                out[env_name(f)] = str(value)
        return out

    def log_lines(self) -> list[str]:
        return [f"  {k} = {v!r}" for k, v in self.describe().items()]


def _parse(tp: Any, raw: str, name: str) -> Any:
    try:
        if tp is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        if typing.get_origin(tp) is tuple:
            return tuple(raw.split())
        return raw
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {getattr(tp, '__name__', tp)}") from None


def mask_url(url: str) -> str:
    """A database URL fit for logs: the password of a URI (user:secret@host) or of a key=value
    conninfo (password=secret, also ?password= in a URI's query) becomes ***."""
    url = re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"password\s*=\s*('(?:[^'\\]|\\.)*'|[^\s&]+)", "password=***", url)


def click_options(cls: type[Settings], exclude: tuple[str, ...] = ()) -> Callable:
    """Decorator: one click option per field of ``cls``, each with its environment variable."""
    hints = typing.get_type_hints(cls)

    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in exclude:
                continue
            tp = hints[f.name]
            flag = flag_name(f)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kwargs: dict[str, Any] = {
                "envvar": env_name(f),
                "show_envvar": True,
                "help": f.metadata["help"],
                "show_default": True,
                "default": default,
            }
            if tp is bool and default:
                decls = [f"{flag}/--no-{flag[2:]}", f.name]  # on by default: --no-x is the flag users type
            elif tp is bool:
                decls = [flag, f.name]
                kwargs["is_flag"] = True
                kwargs["show_default"] = False
            else:
                decls = [flag, f.name]
                if f.metadata.get("choices"):
                    kwargs["type"] = click.Choice(f.metadata["choices"])
                elif typing.get_origin(tp) is tuple:
                    kwargs["multiple"] = True
                else:
                    kwargs["type"] = tp
            fn = click.option(*decls, **kwargs)(fn)
        return fn

    return decorate


def from_click(cls: type[Settings], kwargs: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items() if k in names})


def split_addrs(value: str) -> list[str]:
    """'tcp://a:1, tcp://b:1' -> ['tcp://a:1', 'tcp://b:1']"""
    return [a.strip() for a in value.replace(" ", ",").split(",") if a.strip()]


# ---------------------------------------------------------------------------------------
# Default endpoints. Binding sides listen on every interface (a viewer may be elsewhere);
# connecting sides default to this machine.
FRAMES_PORT, WORK_PORT, METRICS_IN_PORT, METRICS_PORT, RECORDS_PORT = 5555, 5556, 5557, 5558, 5559


@dataclass
class IngestConfig(Settings):
    stream: str = setting("", "MJPEG stream URL, e.g. http://<PI_IP>:8000/stream.mjpg (required)")
    stream_id: str = setting("cam0", "Name of this camera's stream; one ingest per camera, each with its own id")
    frames_bind: str = setting(f"tcp://*:{FRAMES_PORT}", "PUB endpoint publishing every frame (viewer, recorder)")
    work_bind: str = setting(f"tcp://*:{WORK_PORT}", "ROUTER endpoint that hands frames to encoder workers")
    metrics_in: str = setting(
        f"tcp://127.0.0.1:{METRICS_IN_PORT}", "Metrics' input, told of dropped frames and the end of the stream"
    )
    lossless: bool = setting(False, "Wait for a free encoder instead of dropping frames (video files, benchmarks)")
    max_frames: int = setting(0, "Stop after publishing this many frames (0 = never)", minimum=0)
    connect_timeout: float = setting(5.0, "Seconds to wait for the camera to answer", minimum=0.1)
    read_timeout: float = setting(10.0, "Seconds without data before the stream is reconnected", minimum=0.1)
    reconnect_max: float = setting(10.0, "Longest wait between reconnection attempts, seconds", minimum=0.1)
    reconnect: bool = setting(True, "Reconnect when the stream drops or ends (off: end the stream instead)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.stream_id):
            raise SettingsError(f"--stream-id must be 1-64 letters, digits, '_', '.', '-': got {self.stream_id!r}")


@dataclass
class EncoderConfig(Settings):
    work: str = setting(f"tcp://127.0.0.1:{WORK_PORT}", "Ingest work endpoint(s) to take frames from, comma-separated")
    metrics_in: str = setting(f"tcp://127.0.0.1:{METRICS_IN_PORT}", "Metrics' input, where embeddings are pushed")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    model: str = setting("ViT-B-32", "open_clip model name, or the path of a model config JSON")
    pretrained: str = setting("openai", "open_clip pretrained tag, a local checkpoint path, or 'none' (random weights)")
    batch_size: int = setting(
        0,
        "Largest batch encoded at once (0 = auto: 8 on the CPU, where larger batches gain "
        "little and cost latency; 64 on CUDA)",
        minimum=0,
    )
    batch_wait_ms: float = setting(5.0, "How long to wait for more frames once one is waiting, ms", minimum=0)
    precision: str = setting(
        "auto",
        "Model precision: auto (fp16 on CUDA, fp32 on the CPU), fp32, fp16 (CUDA only), "
        "bf16. On a CPU with AVX512-BF16 or AMX, bf16 measured 1.8x the fp32 speed for "
        "ViT-B-32 (AMD EPYC, 2 cores) at embedding cosine >= 0.9999 to fp32; without those "
        "instructions it is slower than fp32",
        choices=("auto", "fp32", "fp16", "bf16"),
    )
    fast_decode: bool = setting(
        True,
        "Decode JPEGs at a reduced DCT scale when larger than the model input "
        "(same embeddings within cosine 0.99; off = decode at full size)",
    )
    threads: int = setting(0, "CPU threads for the model (0 = all cores)", minimum=0)
    decode_threads: int = setting(
        0, "Threads decoding JPEGs (0 = auto: 1 on the CPU, whose cores run the model; up to 8 with CUDA)", minimum=0
    )
    worker_id: str = setting("", "Name of this worker in logs and records (default: host-pid)")
    gpus: str = setting("", "Start one worker per GPU: 'all' or GPU numbers like 0,1 (each on cuda:N)")
    ready_file: str = setting("", "Create this file once the model is loaded (the all-in-one launcher waits for it)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise SettingsError(f"--device / ENCODERS_DEVICE must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class MetricsConfig(Settings):
    metrics_in_bind: str = setting(f"tcp://*:{METRICS_IN_PORT}", "PULL endpoint for embeddings and ingest notices")
    metrics_bind: str = setting(f"tcp://*:{METRICS_PORT}", "PUB endpoint for metrics records (viewers)")
    records_bind: str = setting(
        f"tcp://*:{RECORDS_PORT}", "PUSH endpoint for the recorder: reliable, never dropped ('none' = no recorder)"
    )
    rolling_window: int = setting(300, "Drift history size (frames) for rolling statistics", minimum=2)
    max_wait: float = setting(
        10.0,
        "Seconds to wait for a missing frame before giving it up as lost (a batch on "
        "a slow CPU takes seconds: keep this above one batch's time)",
        minimum=0.0,
    )
    scene_threshold: float = setting(
        0.25, "A frame whose drift is at least this is a scene change (0 = off)", minimum=0.0
    )
    scene_k: float = setting(
        6.0,
        "Adaptive scene-change rule: drift above the mean + K standard deviations of the "
        "rolling window before the frame (0 = off)",
        minimum=0.0,
    )
    scene_min_drift: float = setting(
        0.05,
        "The adaptive rule ignores drifts below this (in a still scene a tiny spread would make noise a scene change)",
        minimum=0.0,
    )
    scene_min_frames: int = setting(30, "The adaptive rule waits until the window holds this many drifts", minimum=2)
    exit_after_streams: int = setting(0, "Exit once this many streams have ended (0 = run until stopped)", minimum=0)


@dataclass
class RecorderConfig(Settings):
    records: str = setting(f"tcp://127.0.0.1:{RECORDS_PORT}", "Metrics' record endpoint to pull from")
    frames: str = setting(f"tcp://127.0.0.1:{FRAMES_PORT}", "Ingest frame endpoint(s) for snapshots, comma-separated")
    database_url: str = setting("", "PostgreSQL URL; empty = an embedded server under the runs folder", secret=True)
    runs_dir: str = setting("runs", "Folder that holds one folder per run")
    run_dir: str = setting("", "This run's folder (default: <runs-dir>/YYYYMMDD_HHMMSS)")
    snapshot_interval: float = setting(30.0, "Seconds between snapshots", minimum=0.0)
    embedding_interval: int = setting(100, "Frames between embedding saves (one .npz per batch)", minimum=1)
    stream_dirs: bool = setting(False, "Give every stream its own folder (the all-in-one does when it has several)")
    db_batch: int = setting(
        500,
        "Rows per COPY into the database; rows that gather while one is being "
        f"written go out together, up to {DB_MAX_WAITING_BATCHES} times this",
        minimum=1,
    )
    db_flush_s: float = setting(0.5, "Longest a row waits before it is written, seconds", minimum=0.01)
    exit_after_streams: int = setting(0, "Exit once this many streams have ended (0 = run until stopped)", minimum=0)
    pipeline_config: str = setting("", "JSON of the whole pipeline's settings, stored in config.json and the run row")
    db_connect_timeout: float = setting(
        10.0, "Seconds the database may take to answer at start before the recorder gives up", minimum=0.1
    )
    db_retry_max: float = setting(
        10.0, "Longest wait between attempts to reach a database that went away, seconds", minimum=0.1
    )
    db_final_wait: float = setting(
        5.0,
        "At exit, seconds to keep trying an unreachable database before leaving its rows in the run's spool file",
        minimum=0.0,
    )
    thumbnails: str = setting(
        "all",
        "Embedded frames that get a small JPEG thumbnail in the database, for search "
        "results: all, keyframes (one per segment of near-identical frames) or none",
        choices=("all", "keyframes", "none"),
    )
    thumbnail_size: int = setting(160, "Thumbnail's longest side, pixels", minimum=16)
    thumbnail_quality: int = setting(70, "Thumbnail JPEG quality", minimum=1)
    thumbnail_threads: int = setting(
        0,
        "Threads making thumbnails side by side, 0 = one per core up to 8 (a thumbnail "
        "takes about 0.8 ms of a core for a 640x480 frame)",
        minimum=0,
    )
    frame_cache: int = setting(
        600,
        "JPEGs of recent frames kept per stream until their record arrives (snapshots "
        "and thumbnails are made from them)",
        minimum=1,
    )
    keyframe_drift: float = setting(
        0.05,
        "A frame further than this (cosine distance) from its segment's keyframe "
        "starts a new segment; only keyframes go into the HNSW index",
        minimum=0.0,
    )
    keyframe_max_s: float = setting(
        5.0,
        "Longest segment, seconds of capture time (a search ranks every frame of the segments it finds)",
        minimum=0.01,
    )


@dataclass
class DatabaseConfig(Settings):
    database_url: str = setting("", "PostgreSQL URL; empty = the embedded server under the runs folder", secret=True)
    runs_dir: str = setting("runs", "Folder that holds one folder per run (and the embedded database)")


@dataclass
class SearchConfig(DatabaseConfig):
    device: str = setting("cpu", "Where the query is embedded: auto, cpu, cuda or cuda:N")
    model: str = setting("ViT-B-32", "open_clip model for --text/--image: the encoder's (ENCODERS_MODEL)")
    pretrained: str = setting("openai", "Its weights: the encoder's (ENCODERS_PRETRAINED)")
    search_candidates: int = setting(
        10,
        "Segments of near-identical frames ranked frame by frame per query (at least -k); more finds more, slower",
        minimum=1,
    )
    search_ef: int = setting(
        SEARCH_EF,
        "hnsw.ef_search of an unfiltered --image or --frame query (a filtered one raises "
        "it with the filter's selectivity); more than pgvector's 40 keeps the greedy search "
        "from stranding in the wrong views; at most 1000",
        minimum=1,
    )
    search_ef_text: int = setting(
        SEARCH_EF_TEXT,
        "hnsw.ef_search of a --text query: text embeddings lie far from every frame "
        "(cosine ~0.3), where the greedy search strands more easily (on 2M frames, "
        "benchmarks/RESULTS.md: keyframe recall@10 0.970 at 200, 0.995 at 400, 1.000 at "
        "800, for about 4 ms more than 200); at most 1000",
        minimum=1,
    )
    search_exact_keyframes: int = setting(
        2000, "A filter that leaves at most this many keyframes is searched exactly, without the HNSW index", minimum=0
    )


@dataclass
class ViewerConfig(Settings):
    frames: str = setting(f"tcp://127.0.0.1:{FRAMES_PORT}", "Ingest frame endpoint(s), comma-separated")
    metrics: str = setting(f"tcp://127.0.0.1:{METRICS_PORT}", "Metrics PUB endpoint")
    plot: bool = setting(True, "Show the matplotlib drift plot beside the video")
    window: str = setting("encoders", "Window title")
    history: int = setting(300, "Drift values per stream kept for the plot", minimum=2)
    web: str = setting("", "Serve the web viewer on HOST:PORT (PORT alone: localhost); no display needed then")
    web_token: str = setting(
        "",
        "Secret every web request must carry (?token=... or 'Authorization: Bearer ...'); "
        "required when --web listens beyond localhost",
        secret=True,
    )
    with_window: bool = setting(False, "With --web: open the video window too")
    database_url: str = setting(
        "", "PostgreSQL holding the embeddings: turns on the web page's search box", secret=True
    )
    runs_dir: str = setting("runs", "Folder of the run folders (search results' snapshots)")
    model: str = setting("ViT-B-32", "open_clip model the stored embeddings were made with (search's text tower)")
    pretrained: str = setting("openai", "Its pretrained tag or checkpoint path")
    search_ef_text: int = setting(
        SEARCH_EF_TEXT, "hnsw.ef_search of the search box's queries (as `encoders search --text`)", minimum=1
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.web:
            return
        host, _ = self.web_address()
        if not self.web_token and not _is_loopback(host):
            raise SettingsError(
                f"--web {self.web} listens beyond this machine: set a token too (--web-token or "
                "ENCODERS_WEB_TOKEN), which every browser then needs (?token=...)"
            )

    def web_address(self) -> tuple[str, int]:
        """--web as (host, port). 'PORT' and ':PORT' mean localhost; IPv6 as '[::1]:PORT'."""
        host, sep, port = self.web.rpartition(":")
        if not sep:
            host, port = "", self.web
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not port.isdigit() or not 0 <= int(port) <= 65535 or (":" in host and not self.web.startswith("[")):
            raise SettingsError(f"--web / ENCODERS_WEB must be HOST:PORT, PORT or [IPv6]:PORT, got {self.web!r}")
        return host or "127.0.0.1", int(port)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.web_token:
            out["web_token"] = "***"  # a bare secret, which mask_url (made for URLs) would leave readable
        return out


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


@dataclass
class PisimConfig(Settings):
    host: str = setting("127.0.0.1", "Interface to listen on")
    port: int = setting(8000, "Port to listen on", minimum=0)
    source: str = setting("synthetic", "'synthetic', a video file, or a folder of images")
    width: int = setting(640, "Frame width (synthetic and resized sources)", minimum=16)
    height: int = setting(480, "Frame height", minimum=16)
    fps: float = setting(15.0, "Frames per second (0 = as fast as possible)", minimum=0.0)
    quality: int = setting(80, "JPEG quality", minimum=1)
    max_frames: int = setting(0, "End each client's stream after this many frames (0 = never)", minimum=0)
    scene_every: float = setting(4.0, "Synthetic scene: seconds between cuts to another scene", minimum=0.1)
    seed: int = setting(0, "Synthetic scene random seed")


@dataclass
class RunConfig(Settings):
    stream: tuple[str, ...] = setting((), "MJPEG stream URL; give it once per camera (required)")
    display: bool = setting(True, "Show the live video window (--no-display: headless)")
    plot: bool = setting(True, "Show the matplotlib drift plot")
    save: bool = setting(True, "Store embeddings, drift and snapshots (--no-save: nothing is written)")
    test: bool = setting(False, "Test the connection to each stream, then exit")
    duration: float = setting(0.0, "Stop after this many seconds (0 = until Q, Ctrl+C or the streams end)", minimum=0)
    max_frames: int = setting(0, "Stop after this many frames per stream (0 = no limit)", minimum=0)
    workers: int = setting(1, "Encoder worker processes", minimum=1)
    lossless: bool = setting(False, "Embed every frame, slowing the stream instead of dropping frames")
    runs_dir: str = setting("runs", "Folder that holds one folder per run")
    database_url: str = setting("", "PostgreSQL URL; empty = an embedded server under the runs folder", secret=True)
    bind_host: str = setting("127.0.0.1", "Interface the services' sockets listen on (0.0.0.0 for remote viewers)")
    web: str = setting(
        "",
        "Serve the web viewer for this run on HOST:PORT (PORT alone: localhost; beyond "
        "localhost it needs ENCODERS_WEB_TOKEN)",
    )


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
