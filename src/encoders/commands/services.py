"""One command per service, each with its settings as options (``metrics``, ``ingest``, ``encode``,
``record``, ``view``, ``pisim``), and ``health``, which asks one running on this machine."""

from __future__ import annotations

import sys

import click

from encoders.services.encoder.config import EncoderConfig
from encoders.services.ingest.config import IngestConfig
from encoders.services.metrics.config import MetricsConfig
from encoders.services.pisim.config import PisimConfig
from encoders.services.recorder.config import RecorderConfig
from encoders.services.viewer.config import ViewerConfig
from encoders.shared.health import SERVICES as HEALTH_SERVICES
from encoders.shared.health import NoHealthPort, ask, health_url
from encoders.shared.settings import Exported, click_options, from_click

from . import CONTEXT


@click.command(context_settings=CONTEXT)
@click_options(IngestConfig)
@click.option("--test", is_flag=True, help="Read one frame to check the stream, then exit (non-zero on failure)")
def ingest(test: bool, **kwargs) -> None:
    """Read one camera's MJPEG stream and publish its frames."""
    cfg = from_click(IngestConfig, kwargs)
    if not cfg.stream:
        raise click.UsageError("--stream URL (or ENCODERS_STREAM) is required")
    from encoders.services.ingest import main

    sys.exit(main.check(cfg) if test else main.run(cfg))


@click.command(context_settings=CONTEXT)
@click_options(EncoderConfig)
def encode(**kwargs) -> None:
    """An encoder worker: CLIP embeddings of the frames it is handed, in batches."""
    from encoders.services.encoder import main

    sys.exit(main.run(from_click(EncoderConfig, kwargs)))


@click.command(context_settings=CONTEXT)
@click_options(MetricsConfig)
def metrics(**kwargs) -> None:
    """Put embeddings back in order; similarity and drift between consecutive frames."""
    from encoders.services.metrics import main

    sys.exit(main.run(from_click(MetricsConfig, kwargs)))


@click.command(context_settings=CONTEXT)
@click_options(RecorderConfig)
def record(**kwargs) -> None:
    """Store every embedding in PostgreSQL + pgvector, and the run's files on disk."""
    from encoders.services.recorder import main

    sys.exit(main.run(from_click(RecorderConfig, kwargs)))


@click.command(context_settings=CONTEXT)
@click_options(ViewerConfig)
def view(**kwargs) -> None:
    """Live video with the drift overlay; needs only the publishers' addresses."""
    from encoders.services.viewer import main

    sys.exit(main.run(from_click(ViewerConfig, kwargs)))


@click.command(context_settings=CONTEXT)
@click.argument("service", type=click.Choice(HEALTH_SERVICES))
@click.option("--timeout", type=click.FloatRange(0.1), default=3.0, show_default=True, help="Seconds to wait")
@click_options(Exported)
@click.option("--host", "stream_host", default="127.0.0.1", envvar="ENCODERS_HOST", help="pisim's interface")
@click.option("--port", "stream_port", type=int, default=8000, envvar="ENCODERS_PORT", help="pisim's port")
def health(service: str, timeout: float, stream_host: str, stream_port: int, **kwargs) -> None:
    """Ask SERVICE, running on this machine, whether it is healthy: exit status 0 if so, 1 if not.

    It reads the same ENCODERS_* variables as the service, so in the service's container (compose's
    health checks) it finds the service's port by itself: /healthz beside the Prometheus metrics
    (metrics 9556, recorder 9557, viewer 9558, ingest 9560, encoder 9580), pisim's /health.
    """
    try:
        url = health_url(service, from_click(Exported, kwargs), stream_host=stream_host, stream_port=stream_port)
    except NoHealthPort as exc:
        raise click.ClickException(str(exc)) from None
    healthy, said = ask(url, timeout)
    click.echo(f"{service}: healthy" if healthy else f"{service}: unhealthy: {said}", err=not healthy)
    sys.exit(0 if healthy else 1)


@click.command(context_settings=CONTEXT)
@click_options(PisimConfig)
def pisim(**kwargs) -> None:
    """Stand in for the Pi: serve /stream.mjpg and /health from a video, images or a synthetic scene."""
    from encoders.services.pisim import main

    sys.exit(main.run(from_click(PisimConfig, kwargs)))


COMMANDS = (ingest, encode, metrics, record, view, health, pisim)
