"""The ``encoders`` command: the all-in-one pipeline, and one subcommand per service.

The root group is the all-in-one command itself (commands/pipeline.py); each module of
encoders.commands adds the subcommands of one part (commands/__init__.py lists them). Service
modules are imported only when their command runs, so that a machine with the viewer alone
installed never needs torch, and so on.
"""

from __future__ import annotations

import os

import click

from encoders.shared.settings import unknown_variables
from encoders.variables import KNOWN_VARIABLES

from .commands import keys, recorded, services, triggers
from .commands.pipeline import cli

for command in (*services.COMMANDS, keys.keys, *recorded.COMMANDS, triggers.trigger):
    cli.add_command(command)


def main() -> None:
    for warning in unknown_variables(os.environ, KNOWN_VARIABLES):
        click.echo(f"encoders: warning: {warning}", err=True)
    cli(prog_name="encoders")
