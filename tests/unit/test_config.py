"""Settings: one declaration -> click flag, ENCODERS_* variable, validation, masked description."""

import click
import pytest
from click.testing import CliRunner

from encoders.launcher.config import AllInOneConfig
from encoders.services.encoder.config import EncoderConfig
from encoders.services.ingest.config import IngestConfig
from encoders.services.pisim.config import PisimConfig
from encoders.services.recorder.config import RecorderConfig
from encoders.services.search.config import SearchConfig
from encoders.services.viewer.config import ViewerConfig
from encoders.shared.masking import mask
from encoders.shared.settings import (
    ModelSettings,
    SettingsError,
    click_options,
    from_click,
    unknown_variables,
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
    cmd, seen = command_for(AllInOneConfig)
    assert CliRunner().invoke(cmd, [], env={"ENCODERS_STREAM": "http://a/s.mjpg http://b/s.mjpg"}).exit_code == 0
    assert seen["cfg"].stream == ("http://a/s.mjpg", "http://b/s.mjpg")


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: EncoderConfig(device="gpu"), "auto, cpu, cuda or cuda:N"),
        (lambda: EncoderConfig(batch_size=-1), "must be >= 0"),
        (lambda: IngestConfig(stream_id="cam 0"), "stream-id"),
        # Where the help text promises an upper bound, it holds.
        (lambda: SearchConfig(search_ef=1001), "--search-ef / ENCODERS_SEARCH_EF must be <= 1000, got 1001"),
        (lambda: ViewerConfig(search_ef_text=5000), "must be <= 1000"),
        (lambda: PisimConfig(quality=101), "--quality / ENCODERS_QUALITY must be <= 100"),
        (lambda: PisimConfig(port=70000), "must be <= 65535"),
        (lambda: EncoderConfig(thumbnail_quality=0), "must be >= 1"),
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
    assert mask("host=db password=s3cret") == "host=db password=***"


def test_a_default_shared_by_several_services_is_written_once():
    """The model, its weights, the runs folder and the database are the same setting wherever they appear."""
    for cls in (EncoderConfig, SearchConfig, ViewerConfig):
        assert issubclass(cls, ModelSettings)
        cfg = cls()
        assert (cfg.model, cfg.pretrained) == (ModelSettings().model, ModelSettings().pretrained)
    for settings in (RecorderConfig(), SearchConfig(), ViewerConfig(), AllInOneConfig()):
        assert (settings.runs_dir, settings.database_url) == ("runs", "")


def test_the_largest_frame_is_one_setting_of_every_service_that_handles_frames():
    """Issue #22: the size ingest takes from a camera is the size the core and the others let
    through their sockets; one variable sets them all. And the frames publisher's budget."""
    from encoders.services.metrics.config import FRAMES_HWM_MIN, MetricsConfig, frames_hwm
    from encoders.variables import KNOWN_VARIABLES

    environ = {"ENCODERS_MAX_FRAME_BYTES": "4096", "ENCODERS_FRAMES_BUFFER_MB": "8"}
    for cls in (IngestConfig, MetricsConfig, EncoderConfig, RecorderConfig, ViewerConfig):
        assert cls.from_env(environ).max_frame_bytes == 4096, cls
    assert {"ENCODERS_MAX_FRAME_BYTES", "ENCODERS_FRAMES_BUFFER_MB", "ENCODERS_WEB_TOKEN_TIMEOUT"} <= KNOWN_VARIABLES
    assert frames_hwm(MetricsConfig().frames_buffer_mb) == 64  # a 1 MB frame a message
    assert frames_hwm(MetricsConfig.from_env(environ).frames_buffer_mb) == FRAMES_HWM_MIN == 16
    assert frames_hwm(1000) == 1000


def test_a_secret_token_is_masked_whole():
    cfg = ViewerConfig(web="8080", web_token="s3cret-token")
    assert cfg.describe()["web_token"] == "***"
    assert "s3cret" not in "\n".join(cfg.log_lines())


def test_an_unknown_variable_is_named_with_the_closest_known_one():
    known = {"ENCODERS_STREAM", "ENCODERS_STREAM_ID", "ENCODERS_MODEL", "ENCODERS_LOG_LEVEL"}
    environ = {"ENCODERS_STRAEM": "http://pi", "ENCODERS_MODEL": "ViT-B-32", "ENCODERS_ZZZ": "1", "PATH": "/bin"}
    warnings = unknown_variables(environ, known)
    assert warnings == [
        "ENCODERS_STRAEM is not a setting of any encoders service and is ignored (did you mean ENCODERS_STREAM?)",
        "ENCODERS_ZZZ is not a setting of any encoders service and is ignored",
    ]
