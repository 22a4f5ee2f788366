"""What every service's main() does around its loop: logging, the settings banner, signals, start-up failures.

Every service starts the same way (``service_main``): its logging, a banner of its settings,
SIGTERM and SIGINT turned into a stop event, then its body. A service that cannot start (a
port that cannot be bound, an endpoint that does not parse, a database it cannot reach)
raises ``StartupError``: it exits with code 2 and one line saying why, never a traceback.
A body that returns on its own returns 0 or 1.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from .settings import Settings

# Variables every service reads besides its settings.
RUNTIME_VARIABLES = {"ENCODERS_LOG_LEVEL", "ENCODERS_LOG_FORMAT"}


class JsonLines(logging.Formatter):
    """ENCODERS_LOG_FORMAT=json: one JSON object a line (time, service, level, message, stream
    where known, the exception if any), for log shippers. Written here rather than taken from
    a library: it is these few fields, and every service would carry the dependency."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "service": self.service,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        stream = getattr(record, "stream", None)
        if stream:
            out["stream"] = stream
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(service: str) -> logging.Logger:
    level = os.environ.get("ENCODERS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {service:<8} %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    fmt = os.environ.get("ENCODERS_LOG_FORMAT", "text").lower()
    if fmt == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLines(service))
    elif fmt != "text":
        logging.getLogger("encoders").warning("ENCODERS_LOG_FORMAT=%s: not text or json; logging text", fmt)
    # pgserver narrates every postgres command at INFO; its warnings are what matter here.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # open_clip narrates model creation at INFO on the root logger: keep its warnings only.
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or "open_clip" not in r.pathname)
    return logging.getLogger(f"encoders.{service}")


def tag_stream(stream: str) -> None:
    """Every log record of this process is about one stream (an ingest): say which, in JSON logs."""

    def tag(record: logging.LogRecord) -> bool:
        record.stream = getattr(record, "stream", None) or stream
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


def log_settings(log: logging.Logger, service: str, cfg: Settings) -> None:
    log.info("%s starting (pid %d) with settings:\n%s", service, os.getpid(), "\n".join(cfg.log_lines()))


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT: both mean 'finish what you hold, flush, exit'."""
    stop = threading.Event()

    def handler(signum, _frame):
        logging.getLogger("encoders").info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


class StartupError(RuntimeError):
    """A service cannot start; the message says which setting or endpoint, in one line."""


def service_main(service: str, cfg: Settings, body: Callable[[threading.Event], int], *, stream: str = "") -> int:
    """Logging, the settings banner and the stop event around ``body(stop)``; StartupError exits 2.
    ``stream``: the one stream this process serves (an ingest), named in every JSON log line."""
    log = setup_logging(service)
    if stream:
        tag_stream(stream)
    log_settings(log, service, cfg)
    stop = stop_on_signals()
    try:
        return body(stop)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
