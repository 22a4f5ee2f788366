"""``encoders keys``: CurveZMQ keys, each bound to its role (shared/keys.py, which imports zmq, does the work)."""

from __future__ import annotations

import click

from . import CONTEXT


@click.group(context_settings=CONTEXT)
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
