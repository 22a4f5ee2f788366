"""The ``encoders`` command: the all-in-one pipeline, and one subcommand per service.

Service modules are imported only when their command runs, so that a machine with the
viewer alone installed never needs torch, and so on.
"""

from __future__ import annotations

import os
import sys

import click

from encoders.launcher.config import AllInOneConfig
from encoders.services.encoder.config import EncoderConfig
from encoders.services.ingest.config import IngestConfig
from encoders.services.metrics.config import MetricsConfig
from encoders.services.pisim.config import PisimConfig
from encoders.services.recorder.config import RecorderConfig, RetentionConfig
from encoders.services.search.config import SearchConfig
from encoders.services.search.triggers import TriggerConfig
from encoders.services.viewer.config import ViewerConfig
from encoders.shared.endpoints import CORE_PORT, this_machine
from encoders.shared.health import SERVICES as HEALTH_SERVICES
from encoders.shared.health import NoHealthPort, ask, health_url
from encoders.shared.settings import Exported, click_options, from_click, unknown_variables
from encoders.shared.storage.config import DatabaseConfig, ServeConfig
from encoders.variables import KNOWN_VARIABLES

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


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


@cli.group(context_settings=CONTEXT)
def keys() -> None:
    """CurveZMQ keys: every link to the core encrypted, and each key served in its role only.

    A key's role is its file's name in the core's allowed/: ROLE.key (`init` makes one per role)
    or ROLE-MACHINE.key (`add`, one machine's). `add` and `revoke` take effect on a running core.
    """


@keys.command("init", context_settings=CONTEXT)
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--if-missing", is_flag=True, help="A folder with keys already is kept as it is (compose's first start)")
def keys_init(folder: str, if_missing: bool) -> None:
    """Make a key pair per role (core, ingest, worker, recorder, viewer, control) and the core's
    allow-list in FOLDER. Then set ENCODERS_KEYS=FOLDER for every service: the core's machine
    needs core.key_secret and allowed/; every other machine core.key and its role's .key_secret.
    """
    from pathlib import Path

    from encoders.shared import keys as curve
    from encoders.shared.runtime import StartupError

    if if_missing and any(Path(folder).glob("*.key")):
        click.echo(f"{folder} holds keys already: kept")
        return
    try:
        made = curve.init(folder)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{len(made)} files in {folder}; set ENCODERS_KEYS={folder} for every service")


KEY_ROLES = ("ingest", "worker", "recorder", "viewer", "control")  # shared/keys.py's CLIENT_ROLES (it imports zmq)


@keys.command("add", context_settings=CONTEXT)
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--role", required=True, type=click.Choice(KEY_ROLES), help="What the machine runs: its key is served as that only"
)
@click.option("--name", "machine", required=True, help="The machine's name (letters, digits, '.', '_', '-'): gpu1")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Where to put what the machine needs  [default: FOLDER/ROLE-NAME]",
)
def keys_add(folder: str, role: str, machine: str, out: str | None) -> None:
    """A key of its own for one machine: FOLDER/allowed/ROLE-NAME.key, which the core serves as
    ROLE only, and in --out the machine's part of the keys (core.key, ROLE.key_secret, ROLE.key).
    Copy that folder to the machine and set ENCODERS_KEYS to it there.

    FOLDER is the core's key folder (what `encoders keys init` made; the core's ENCODERS_KEYS).
    A running core takes the new key at once, without a restart.
    """
    from encoders.shared import keys as curve
    from encoders.shared.runtime import StartupError

    try:
        made = curve.add_machine(folder, role, machine, out)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{folder}/allowed/{role}-{machine}.key is served as {role}; copy {made} to that machine and set "
        f"ENCODERS_KEYS={made} there (it holds the secret key: only that machine may have it)"
    )


@keys.command("revoke", context_settings=CONTEXT)
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.argument("name")
def keys_revoke(folder: str, name: str) -> None:
    """Shut the key NAME out: remove FOLDER/allowed/NAME.key (NAME as `encoders keys list` shows it,
    e.g. worker-gpu1, or viewer for the role's shared key).

    A running core reads allowed/ again within a second: it ends the sessions of that key (its
    services exit, refused) and drops its publishers' subscribers, who connect again if their key
    is still served. No restart.
    """
    from encoders.shared import keys as curve
    from encoders.shared.runtime import StartupError

    try:
        removed = curve.revoke(folder, name)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"removed {removed}: the core no longer serves it")


@keys.command("list", context_settings=CONTEXT)
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
def keys_list(folder: str) -> None:
    """The keys the core serves from FOLDER/allowed/, and the role each is bound to (from its file's
    name: ROLE.key or ROLE-MACHINE.key); a file it ignores, and why."""
    from encoders.shared import keys as curve

    rows = curve.listing(folder)
    if not rows:
        click.echo(f"no keys in {folder}/allowed/: the core would serve nobody")
        return
    width = max(len(name) for name, _ in rows)
    for name, role in rows:
        click.echo(f"{name.ljust(width)}  {role}")


@cli.command(context_settings=CONTEXT)
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


@cli.command(context_settings=CONTEXT)
@click_options(PisimConfig)
def pisim(**kwargs) -> None:
    """Stand in for the Pi: serve /stream.mjpg and /health from a video, images or a synthetic scene."""
    from encoders.services.pisim import main

    sys.exit(main.run(from_click(PisimConfig, kwargs)))


# ---------------------------------------------------------------------------------------
# Questions asked of the recorded frames

FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="Output: an aligned table, or JSON / CSV for programs",
)
FILTERS = (
    click.option("--run", help="Only this run (its id or name; `encoders runs` lists them)"),
    click.option("--stream", help="Only this stream (camera), e.g. cam0"),
    click.option("--since", help="Only frames captured at or after: 2026-01-07T14:30, 2026-01-07, 2h, 30m ago"),
    click.option("--until", help="Only frames captured before (same forms as --since)"),
)


def filter_options(fn):
    for option in reversed(FILTERS):
        fn = option(fn)
    return fn


@cli.command(context_settings=CONTEXT)
@click.option("--text", help="Frames that look like this sentence (the CLIP text tower of the encoder's model)")
@click.option("--image", type=click.Path(dir_okay=False), help="Frames that look like this picture")
@click.option("--frame", help="Frames that look like this recorded one: RUN:SEQ or RUN:STREAM:SEQ")
@filter_options
@click.option("-k", "k", type=click.IntRange(1, 10000), default=10, show_default=True, help="How many frames")
@FORMAT
@click.option(
    "--thumbnails",
    type=click.Path(file_okay=False),
    default="",
    help="Write each result's thumbnail into this folder (the picture column then shows it)",
)
@click_options(SearchConfig)
def search(text, image, frame, run, stream, since, until, k, fmt, thumbnails, **kwargs) -> None:
    """The recorded frames most like a sentence, a picture or a frame, best first.

    Ranked by cosine similarity, with each frame's run, stream, sequence number, capture
    time and a picture (its snapshot, or the last one before it; --thumbnails for its own).
    """
    from encoders.services.search import main

    sys.exit(
        main.search(
            from_click(SearchConfig, kwargs),
            text=text,
            image=image,
            frame=frame,
            run=run,
            stream=stream,
            since=since,
            until=until,
            k=k,
            fmt=fmt,
            thumbnails=thumbnails,
        )
    )


@cli.command(context_settings=CONTEXT)
@filter_options
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True, help="At most this many")
@FORMAT
@click_options(DatabaseConfig)
def events(run, stream, since, until, limit, fmt, **kwargs) -> None:
    """Scene changes (frames whose drift stood out) and alerts (a frozen feed, a blackout), oldest first."""
    from encoders.services.search import main

    sys.exit(
        main.events(
            from_click(DatabaseConfig, kwargs), run=run, stream=stream, since=since, until=until, limit=limit, fmt=fmt
        )
    )


@cli.group(context_settings=CONTEXT, invoke_without_command=True)
@click.option("--run", help="Only this run (its id or name)")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True, help="At most this many")
@FORMAT
@click_options(DatabaseConfig)
@click.pass_context
def runs(ctx: click.Context, run, limit, fmt, **kwargs) -> None:
    """Every recorded run, oldest first: when, which model, how many frames and scene changes, mean drift.

    `encoders runs repair` closes the runs a recorder left open (it was killed, its machine
    went down): their files rewritten from their rows, summary.json written, the run ended.
    """
    if ctx.invoked_subcommand is not None:
        return
    from encoders.services.search import main

    sys.exit(main.runs(from_click(DatabaseConfig, kwargs), run=run, limit=limit, fmt=fmt))


@runs.command("repair", context_settings=CONTEXT)
@click.option(
    "--run",
    help="Only this run (its id or name); closed from the database alone when its folder is not on this machine",
)
@click.option(
    "--state-dir",
    "state_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    help="A core's state folder whose records, left unacknowledged, are stored into their run first (default: "
    "<runs-dir>/.core, the all-in-one command's, and ENCODERS_STATE_DIR or the core's default, where they hold any)",
)
@click_options(DatabaseConfig)
def runs_repair(run, state_dirs, **kwargs) -> None:
    """Store what was left undelivered, and close the runs left open by a recorder that is gone.

    First the records a core kept in its state folder because no recorder acknowledged them
    (the recorder hung or its disk filled during the final drain) are stored into the run they
    are for, as its recorder would have (a core not running on that folder only). Then each
    open run whose folder is here and that no live recorder holds has its spool written, its
    drift.csv and npz batches rewritten from its rows, summary.json written from them
    (embedded = the rows stored) and its row ended. A recorder does the latter for every such
    run when it starts; a run being recorded is never touched.
    """
    from encoders.services.search import database

    sys.exit(database.repair(from_click(DatabaseConfig, kwargs), run=run, state_dirs=state_dirs))


@cli.command(context_settings=CONTEXT)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, delete nothing")
@click_options(RetentionConfig)
def prune(dry_run: bool, **kwargs) -> None:
    """Apply the retention policy now: runs that ended over --retention-days ago deleted whole (rows
    and folder); over --retention-gb, the oldest finished runs, then non-keyframe thumbnails. A run
    being recorded is never touched. The recorder applies the same policy every --prune-every seconds.
    """
    from encoders.services.search import database

    sys.exit(database.prune(from_click(RetentionConfig, kwargs), dry_run=dry_run))


@cli.group(context_settings=CONTEXT)
def trigger() -> None:
    """Text triggers: an alert (trigger:NAME) when a frame comes near a sentence, once per visit.

    The sentence is embedded with the encoder's model (ENCODERS_MODEL, ENCODERS_PRETRAINED) and
    kept in --triggers; start the core with ENCODERS_TRIGGERS pointing at that file.
    """


@trigger.command("add", context_settings=CONTEXT)
@click.argument("name")
@click.argument("text")
@click.option("--threshold", type=click.FloatRange(-1, 1), default=0.25, show_default=True,
              help="Cosine of frame and sentence at which it fires (CLIP ViT-B-32: 0.2-0.3 is a match)")  # fmt: skip
@click_options(TriggerConfig)
def trigger_add(name: str, text: str, threshold: float, **kwargs) -> None:
    """Add (or replace) trigger NAME: an alert when a frame comes near TEXT."""
    from encoders.services.search import triggers

    sys.exit(triggers.add(from_click(TriggerConfig, kwargs), name, text, threshold))


@trigger.command("list", context_settings=CONTEXT)
@click_options(TriggerConfig)
def trigger_list(**kwargs) -> None:
    """The triggers in the file: name, threshold, model, sentence."""
    from encoders.services.search import triggers

    sys.exit(triggers.show(from_click(TriggerConfig, kwargs)))


@trigger.command("remove", context_settings=CONTEXT)
@click.argument("name")
@click_options(TriggerConfig)
def trigger_remove(name: str, **kwargs) -> None:
    """Remove trigger NAME from the file."""
    from encoders.services.search import triggers

    sys.exit(triggers.remove(from_click(TriggerConfig, kwargs), name))


@cli.group(context_settings=CONTEXT)
def db() -> None:
    """The recorder's database."""


@db.command(context_settings=CONTEXT)
@click_options(DatabaseConfig)
def migrate(**kwargs) -> None:
    """Bring the database's schema up to date (a recorder does this at start; running it twice is harmless)."""
    from encoders.services.search import database

    sys.exit(database.migrate(from_click(DatabaseConfig, kwargs)))


@db.command(context_settings=CONTEXT)
@click_options(ServeConfig)
def serve(**kwargs) -> None:
    """Keep the embedded database running and print its URL, for psql and other clients.

    The embedded PostgreSQL runs only while something uses it (a run, a search); this keeps
    it up until Ctrl+C, so that psql or a notebook can connect with the URL it prints. It
    listens on a Unix socket, for this machine; --db-listen 0.0.0.0:5432 also serves it over
    TCP, with a password, to other machines (a quick test of several hosts: a networked
    PostgreSQL with pgvector is the lasting way).
    """
    from encoders.services.search import database

    cfg = from_click(ServeConfig, kwargs)
    if cfg.database_url:
        raise click.UsageError("a database URL is set (--database-url / ENCODERS_DATABASE_URL): connect to it directly")
    sys.exit(database.serve(cfg))


def main() -> None:
    for warning in unknown_variables(os.environ, KNOWN_VARIABLES):
        click.echo(f"encoders: warning: {warning}", err=True)
    cli(prog_name="encoders")
