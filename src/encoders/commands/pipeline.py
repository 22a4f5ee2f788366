"""The whole pipeline: ``encoders`` itself (every service on this machine), ``run``, ``demo``, and
``stop``, which drains a running pipeline from anywhere."""

from __future__ import annotations

import sys

import click

from encoders.launcher.config import AllInOneConfig
from encoders.services.pisim.config import PisimConfig
from encoders.shared.endpoints import CORE_PORT, this_machine
from encoders.shared.settings import click_options, from_click

from . import CONTEXT


@click.group(invoke_without_command=True, context_settings=CONTEXT)
@click_options(AllInOneConfig)
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
    cfg = from_click(AllInOneConfig, kwargs)
    if not cfg.stream:
        raise click.UsageError("--stream URL is required (the Pi's MJPEG stream, e.g. http://<PI_IP>:8000/stream.mjpg)")
    from encoders.launcher import main as launcher

    sys.exit(launcher.run(cfg))


@cli.command("run", context_settings=CONTEXT)
@click_options(AllInOneConfig)
@click.pass_context
def run_cmd(ctx: click.Context, **kwargs) -> None:
    """The whole pipeline on this machine (same as `encoders` with no command)."""
    cfg = from_click(AllInOneConfig, kwargs)
    if not cfg.stream:
        raise click.UsageError("--stream URL is required")
    from encoders.launcher import main as launcher

    sys.exit(launcher.run(cfg))


@cli.command(context_settings=CONTEXT)
@click_options(AllInOneConfig, exclude=("stream", "test"))
@click_options(PisimConfig, exclude=("max_frames",))
def demo(**kwargs) -> None:
    """The built-in Pi stand-in plus the whole pipeline: try everything with no camera.

    Unless ENCODERS_PRETRAINED is set, the demo uses random weights (no download needed).
    """
    from encoders.launcher import main as launcher

    sys.exit(launcher.demo(from_click(AllInOneConfig, kwargs), from_click(PisimConfig, kwargs)))


@cli.command(context_settings=CONTEXT)
@click.option(
    "--pipeline",
    envvar="ENCODERS_CORE",
    show_envvar=True,
    default=this_machine(CORE_PORT),
    show_default=True,
    help="The pipeline's core: the metrics service's session socket (port 5556), as this machine reaches it",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds to wait for the pipeline to drain and report that it has stopped (exit 1 past it)",
)
@click.option("--reason", default="", help="Why, for the pipeline's logs (default: this host and process)")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="How the totals are printed on stdout: an aligned table for people, or for programs one JSON object "
    'on one line, {"streams": {NAME: {"published": N, "embedded": N, "dropped": N, "skipped": N, "lost": N, ...}}} '
    "(published is null where it is not known)",
)
def stop(pipeline: str, timeout: float, reason: str, fmt: str) -> None:
    """Stop a running pipeline from anywhere: its cameras end, every frame in flight gets its
    outcome and every record is stored, then its services exit (viewers too). Prints each
    stream's totals on stdout (--format json for scripts); what it is doing goes to stderr.
    With keys on, it needs ENCODERS_KEYS (the control role's key).

    Exits 0 once stopped, 1 if it has not within --timeout, 2 if no core answers at --pipeline;
    stdout is empty unless 0.
    """
    from encoders import control

    sys.exit(control.run(pipeline, timeout_s=timeout, reason=reason, fmt=fmt))
