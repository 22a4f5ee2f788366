"""How every service's settings are declared, loaded, checked and shown: the machinery, once.

Each service declares its settings beside its code (``services/<name>/config.py``) as a
dataclass deriving from ``Settings``, one ``setting(...)`` per field. Each field then
becomes, without further code:

- a click option ``--field-name`` (``--x/--no-x`` for booleans),
- an environment variable ``ENCODERS_FIELD_NAME`` (the seed's names are kept:
  ENCODERS_DEVICE, ENCODERS_MODEL, ENCODERS_PRETRAINED, ENCODERS_SNAPSHOT_INTERVAL,
  ENCODERS_EMBEDDING_INTERVAL, ENCODERS_ROLLING_WINDOW),
- a check of its bounds and choices when the object is made (``SettingsError`` names the
  flag and the variable),
- a line in the start-up log and in the run's config.json (secrets masked).

Fields that mean the same thing in several services (an address, the model) have the same
name and so the same variable: in docker-compose one variable configures both ends. Such a
field is declared once, in a group several services derive from (``SessionSettings``,
``CoreConnection``, ``StreamDown``, ``ModelSettings`` here, ``DatabaseConfig`` in
shared/storage/config.py), so its default is written once.

An ``ENCODERS_*`` variable that no service reads is almost always a typo, which would
otherwise be silently ignored: ``unknown_variables`` names the closest known one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar

import click

from .endpoints import CORE_PORT, this_machine
from .masking import mask

ENV_PREFIX = "ENCODERS_"
Secret = Literal["url", "value"]
S = TypeVar("S", bound="Settings")


def setting(
    default: Any,
    help: str,
    *,
    env: str | None = None,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    flag: str | None = None,
    secret: Secret | None = None,
) -> Any:
    """One setting: its default, the help text of its flag and variable, and its bounds.

    ``secret``: "url" masks the password of a database URL in logs, "value" the whole value.
    """
    meta = {
        "help": help,
        "env": env,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "flag": flag,
        "secret": secret,
    }
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


def env_name(f: dataclasses.Field) -> str:
    return f.metadata.get("env") or ENV_PREFIX + f.name.upper()


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


class SettingsError(click.UsageError):
    """A setting out of its bounds, or one that cannot be parsed; the message names both spellings."""


@dataclass
class Settings:
    """Base of every service's settings: loading, validation, description."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            names = f"{flag_name(f)} / {env_name(f)}"
            lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum")
            if lo is not None and value < lo:
                raise SettingsError(f"{names} must be >= {lo}, got {value}")
            if hi is not None and value > hi:
                raise SettingsError(f"{names} must be <= {hi}, got {value}")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise SettingsError(f"{names} must be one of {', '.join(choices)}, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Build from ENCODERS_* variables (as a service started by compose is), then overrides."""
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
            secret = f.metadata.get("secret")
            if secret and isinstance(value, str):
                value = mask(value, whole=secret == "value")
            elif secret and isinstance(value, tuple):  # a setting given several times: each masked
                value = tuple(mask(v, whole=secret == "value") if isinstance(v, str) else v for v in value)
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


def split_addrs(value: str) -> list[str]:
    """'tcp://a:1, tcp://b:1' -> ['tcp://a:1', 'tcp://b:1']"""
    return [a.strip() for a in value.replace(" ", ",").split(",") if a.strip()]


# -- the command line ------------------------------------------------------------------


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


def from_click(cls: type[S], kwargs: dict[str, Any]) -> S:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items() if k in names})


# -- variables nobody reads --------------------------------------------------------------


def variables_of(classes: Iterable[type[Settings]]) -> set[str]:
    """Every environment variable these settings read."""
    return {env_name(f) for cls in classes for f in dataclasses.fields(cls)}


def unknown_variables(environ: Mapping[str, str], known: set[str]) -> list[str]:
    """One warning per ENCODERS_* variable that nothing reads, naming the closest known one."""
    warnings = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        # Compared without the prefix every name shares, which would make any two look alike.
        bare = {k.removeprefix(ENV_PREFIX): k for k in known}
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), sorted(bare), n=1, cutoff=0.6)
        hint = f" (did you mean {bare[close[0]]}?)" if close else ""
        warnings.append(f"{name} is not a setting of any encoders service and is ignored{hint}")
    return warnings


# -- settings several services share --------------------------------------------------------


KEYS_HELP = (
    "Folder of CurveZMQ keys made by `encoders keys init` (the same folder, or the files of this role, on every "
    "machine): every link to the core encrypted, and only services with an allowed key served. Empty = plain "
    "ZeroMQ, for this machine or a network you trust"
)


# Each service's own port, far from the pipeline's (5555-5558) and from common exporters'.
PORTS = {"metrics": 9556, "recorder": 9557, "viewer": 9558, "ingest": 9560, "encoder": 9580}
NONE = "none"  # ENCODERS_PROMETHEUS_PORT: no metrics served


@dataclass
class Exported(Settings):
    """Where a service serves its Prometheus metrics."""

    prometheus_port: str = setting(
        "auto",
        "Port of this service's Prometheus metrics (/metrics): auto = the service's own (metrics 9556, recorder "
        "9557, viewer 9558, ingest 9560, encoder 9580), a number (0: any free one), or none",
    )
    prometheus_host: str = setting(
        "127.0.0.1", "Interface the Prometheus metrics listen on (0.0.0.0: for a Prometheus on another machine)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        port = self.prometheus_port
        if port not in ("auto", NONE) and not (port.isdigit() and int(port) <= 65535):
            raise SettingsError(f"--prometheus-port / ENCODERS_PROMETHEUS_PORT must be auto, none or a port: {port!r}")

    def prometheus_port_for(self, service: str, index: int = 0) -> int | None:
        """The port to listen on (None: off). ``index`` numbers the processes of one machine that
        one setting starts (the all-in-one's ingests and workers, a worker per GPU): each the
        next port (0 stays 0: any free one)."""
        if self.prometheus_port == NONE:
            return None
        port = PORTS[service] if self.prometheus_port == "auto" else int(self.prometheus_port)
        return port + index if port else 0

    def prometheus_port_setting(self, service: str, index: int) -> str:
        """ENCODERS_PROMETHEUS_PORT for the ``index``-th such process of one machine."""
        port = self.prometheus_port_for(service, index)
        return NONE if port is None else str(port)


MAX_FRAME_BYTES = 32 * 1024 * 1024  # the default of --max-frame-bytes


@dataclass
class FrameBytes(Settings):
    """How large a frame may be, the same on every service that handles frames (issue #22): what
    ingest takes from its camera is what the core and the others let through their sockets."""

    max_frame_bytes: int = setting(
        MAX_FRAME_BYTES,
        "Largest JPEG of a frame (the same on every service): ingest drops a larger part from its camera, counted "
        "as oversized; the core, workers, the recorder and viewers take no larger message part (zmq.MAXMSGSIZE: "
        "a peer that sends one is disconnected)",
        minimum=1024,
    )


@dataclass
class SessionSettings(Settings):
    """How sessions with the core are kept and locked, the same on both ends: the core's and every
    peer's (docs/PROTOCOL.md)."""

    heartbeat_s: float = setting(
        1.0, "Seconds between heartbeats when nothing else is sent (the same on every service)", minimum=0.05
    )
    heartbeat_misses: int = setting(
        3, "Heartbeats missed in a row before the other side counts as gone (the same on every service)", minimum=2
    )
    keys: str = setting("", KEYS_HELP)


@dataclass
class CoreConnection(SessionSettings, FrameBytes, Exported):
    """How a service reaches the core (the metrics service) and keeps its session (docs/PROTOCOL.md)."""

    core: str = setting(
        this_machine(CORE_PORT),
        "The core's address (the metrics service's session socket, port 5556): the one address every service "
        "is given. On several machines, the core's host as this machine reaches it, not 127.0.0.1",
    )


@dataclass
class StreamDown(Settings):
    """When a stream that has not ended counts as down: one meaning, wherever it is watched (the
    core's stream_back, the recorder's stream_down, the web page's list). Not the ingest's
    ENCODERS_STALL_AFTER, which reconnects a camera that sends no complete frame."""

    stream_down_after: float = setting(
        10.0,
        "Seconds without a frame of a stream that has not ended before it counts as down: the recorder tells "
        "'stream_down' (MQTT, the webhook, the events table), the web page lists it down, and the core says "
        "'stream_back' on its next frame (0 = off)",
        minimum=0.0,
    )


@dataclass
class ModelSettings(Settings):
    """The CLIP model: the encoder embeds frames with it, search and the web viewer embed queries."""

    model: str = setting("ViT-B-32", "open_clip model name, or the path of a model config JSON")
    pretrained: str = setting(
        "openai", "open_clip pretrained tag, a local checkpoint path, or 'none' (random weights: tests only)"
    )
