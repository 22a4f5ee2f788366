"""The ``encoders`` command: the all-in-one pipeline, and one subcommand per service.

Service modules are imported only when their command runs, so that a machine with the
viewer alone installed never needs torch, and so on.
"""

from __future__ import annotations

import sys

import click

from encoders.shared.config import (EncoderConfig, IngestConfig, MetricsConfig, PisimConfig, RecorderConfig,
                                    RunConfig, ViewerConfig, click_options, from_click)

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=110)


@click.group(invoke_without_command=True, context_settings=CONTEXT)
@click_options(RunConfig)
@click.pass_context
def cli(ctx: click.Context, **kwargs) -> None:
    """Camera stream -> CLIP embeddings -> drift, as ZeroMQ services.

    Without a command, runs the whole pipeline on this machine (ingest, encoder workers,
    metrics, recorder and viewer as separate processes), like the original tool:

        encoders --stream http://<PI_IP>:8000/stream.mjpg

    Model and service settings (ENCODERS_DEVICE, ENCODERS_MODEL, ENCODERS_PRETRAINED,
    ENCODERS_SNAPSHOT_INTERVAL, ENCODERS_EMBEDDING_INTERVAL, ENCODERS_ROLLING_WINDOW, ...)
    are read from the environment; `encoders COMMAND --help` lists each service's.
    """
    if ctx.invoked_subcommand is not None:
        return
    cfg = from_click(RunConfig, kwargs)
    if not cfg.stream:
        raise click.UsageError("--stream URL is required (the Pi's MJPEG stream, e.g. http://<PI_IP>:8000/stream.mjpg)")
    from encoders import launcher

    sys.exit(launcher.run(cfg))


@cli.command("run", context_settings=CONTEXT)
@click_options(RunConfig)
@click.pass_context
def run_cmd(ctx: click.Context, **kwargs) -> None:
    """The whole pipeline on this machine (same as `encoders` with no command)."""
    cfg = from_click(RunConfig, kwargs)
    if not cfg.stream:
        raise click.UsageError("--stream URL is required")
    from encoders import launcher

    sys.exit(launcher.run(cfg))


@cli.command(context_settings=CONTEXT)
@click_options(RunConfig, exclude=("stream", "test"))
@click_options(PisimConfig, exclude=("max_frames",))
def demo(**kwargs) -> None:
    """The built-in Pi stand-in plus the whole pipeline: try everything with no camera.

    Unless ENCODERS_PRETRAINED is set, the demo uses random weights (no download needed).
    """
    from encoders import launcher

    sys.exit(launcher.demo(from_click(RunConfig, kwargs), from_click(PisimConfig, kwargs)))


@cli.command(context_settings=CONTEXT)
@click_options(IngestConfig)
@click.option("--test", is_flag=True, help="Read one frame to check the stream, then exit (non-zero on failure)")
def ingest(test: bool, **kwargs) -> None:
    """Read one camera's MJPEG stream and publish its frames."""
    cfg = from_click(IngestConfig, kwargs)
    if not cfg.stream:
        raise click.UsageError("--stream URL (or ENCODERS_STREAM) is required")
    from encoders.services.ingest import main

    sys.exit(main.check(cfg) if test else main.run(cfg))


@cli.command(context_settings=CONTEXT)
@click_options(EncoderConfig)
def encode(**kwargs) -> None:
    """An encoder worker: CLIP embeddings of the frames it is handed, in batches."""
    from encoders.services.encoder import main

    sys.exit(main.run(from_click(EncoderConfig, kwargs)))


@cli.command(context_settings=CONTEXT)
@click_options(MetricsConfig)
def metrics(**kwargs) -> None:
    """Put embeddings back in order; similarity and drift between consecutive frames."""
    from encoders.services.metrics import main

    sys.exit(main.run(from_click(MetricsConfig, kwargs)))


@cli.command(context_settings=CONTEXT)
@click_options(RecorderConfig)
def record(**kwargs) -> None:
    """Store every embedding in PostgreSQL + pgvector, and the run's files on disk."""
    from encoders.services.recorder import main

    sys.exit(main.run(from_click(RecorderConfig, kwargs)))


@cli.command(context_settings=CONTEXT)
@click_options(ViewerConfig)
def view(**kwargs) -> None:
    """Live video with the drift overlay; needs only the publishers' addresses."""
    from encoders.services.viewer import main

    sys.exit(main.run(from_click(ViewerConfig, kwargs)))


@cli.command(context_settings=CONTEXT)
@click_options(PisimConfig)
def pisim(**kwargs) -> None:
    """Stand in for the Pi: serve /stream.mjpg and /health from a video, images or a synthetic scene."""
    from encoders.services.pisim import main

    sys.exit(main.run(from_click(PisimConfig, kwargs)))


def main() -> None:
    cli(prog_name="encoders")
