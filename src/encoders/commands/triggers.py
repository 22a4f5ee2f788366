"""``encoders trigger``: text triggers, sentences the core raises an alert for (services/search/triggers.py)."""

from __future__ import annotations

import sys

import click

from encoders.services.search.triggers import TriggerConfig
from encoders.shared.settings import click_options, from_click

from . import CONTEXT


@click.group(context_settings=CONTEXT)
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
