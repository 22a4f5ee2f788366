"""What every service's main() does around its loop: logging, settings banner, shutdown."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from .config import Settings


def setup_logging(service: str) -> logging.Logger:
    level = os.environ.get("ENCODERS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {service:<8} %(levelname)-7s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # pgserver narrates every postgres command at INFO; its warnings are what matter here.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    # open_clip narrates model creation at INFO on the root logger: keep its warnings only.
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or "open_clip" not in r.pathname)
    return logging.getLogger(f"encoders.{service}")


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
