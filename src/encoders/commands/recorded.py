"""Questions asked of the recorded frames (services/search): ``search``, ``events``, ``runs`` (and
``runs repair``), ``prune``, and ``db`` (``migrate``, ``serve``)."""

from __future__ import annotations

import sys

import click

from encoders.services.recorder.config import RetentionConfig
from encoders.services.search.config import SearchConfig
from encoders.shared.settings import click_options, from_click
from encoders.shared.storage.config import DatabaseConfig, ServeConfig

from . import CONTEXT

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


@click.command(context_settings=CONTEXT)
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


@click.command(context_settings=CONTEXT)
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


@click.group(context_settings=CONTEXT, invoke_without_command=True)
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


@click.command(context_settings=CONTEXT)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, delete nothing")
@click_options(RetentionConfig)
def prune(dry_run: bool, **kwargs) -> None:
    """Apply the retention policy now: runs that ended over --retention-days ago deleted whole (rows
    and folder); over --retention-gb, the oldest finished runs, then non-keyframe thumbnails. A run
    being recorded is never touched. The recorder applies the same policy every --prune-every seconds.
    """
    from encoders.services.search import database

    sys.exit(database.prune(from_click(RetentionConfig, kwargs), dry_run=dry_run))


@click.group(context_settings=CONTEXT)
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


COMMANDS = (search, events, runs, prune, db)
