"""Settings: one declaration -> click flag, ENCODERS_* variable, validation, masked description."""

import click
import pytest
from click.testing import CliRunner

from encoders.shared.config import (
    EncoderConfig,
    IngestConfig,
    RecorderConfig,
    RunConfig,
    SettingsError,
    click_options,
    from_click,
    mask_url,
)


def command_for(cls):
    seen = {}

    @click.command()
    @click_options(cls)
    def cmd(**kwargs):
        seen["cfg"] = from_click(cls, kwargs)

    return cmd, seen


def test_the_seeds_variables_keep_their_names_and_meanings():
    cmd, seen = command_for(EncoderConfig)
    env = {"ENCODERS_DEVICE": "cpu", "ENCODERS_MODEL": "ViT-L-14", "ENCODERS_PRETRAINED": "none"}
    assert CliRunner().invoke(cmd, [], env=env).exit_code == 0
    cfg = seen["cfg"]
    assert (cfg.device, cfg.model, cfg.pretrained) == ("cpu", "ViT-L-14", "none")


def test_flags_beat_variables_and_booleans_read_both_ways():
    cmd, seen = command_for(IngestConfig)
    result = CliRunner().invoke(
        cmd,
        ["--stream", "http://pi/stream.mjpg", "--no-reconnect"],
        env={"ENCODERS_STREAM": "http://other", "ENCODERS_LOSSLESS": "true"},
    )
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.stream == "http://pi/stream.mjpg" and cfg.lossless is True and cfg.reconnect is False


def test_settings_survive_the_trip_to_a_child_process_environment():
    """The all-in-one hands each service its settings as ENCODERS_* variables."""
    original = IngestConfig(stream="http://pi:8000/stream.mjpg", stream_id="cam3", lossless=True, max_frames=7)
    cmd, seen = command_for(IngestConfig)
    assert CliRunner().invoke(cmd, [], env=original.to_env()).exit_code == 0
    assert seen["cfg"] == original
    assert IngestConfig.from_env(original.to_env()) == original


def test_several_streams_in_one_variable():
    cmd, seen = command_for(RunConfig)
    assert CliRunner().invoke(cmd, [], env={"ENCODERS_STREAM": "http://a/s.mjpg http://b/s.mjpg"}).exit_code == 0
    assert seen["cfg"].stream == ("http://a/s.mjpg", "http://b/s.mjpg")


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: EncoderConfig(device="gpu"), "auto, cpu, cuda or cuda:N"),
        (lambda: EncoderConfig(batch_size=-1), "must be >= 0"),
        (lambda: IngestConfig(stream_id="cam 0"), "stream-id"),
        (
            lambda: EncoderConfig.from_env({"ENCODERS_BATCH_SIZE": "many"}),
            "ENCODERS_BATCH_SIZE='many' is not a valid int",
        ),
    ],
)
def test_bad_values_name_the_flag_or_variable(make, message):
    with pytest.raises(SettingsError, match=message):
        make()


def test_passwords_never_reach_the_description():
    cfg = RecorderConfig(database_url="postgresql://me:s3cret@db.example:5432/encoders")
    assert "s3cret" not in str(cfg.describe()) and "s3cret" not in "\n".join(cfg.log_lines())
    assert cfg.describe()["database_url"] == "postgresql://me:***@db.example:5432/encoders"
    assert mask_url("host=db password=s3cret") == "host=db password=***"
