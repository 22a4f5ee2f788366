"""Every ENCODERS_* variable some part of encoders reads: one that is set but in none of these is a typo."""

from __future__ import annotations

from encoders.launcher.config import AllInOneConfig
from encoders.services.encoder.config import EncoderConfig
from encoders.services.ingest.config import IngestConfig
from encoders.services.metrics.config import MetricsConfig
from encoders.services.pisim.config import PisimConfig
from encoders.services.recorder.config import RecorderConfig
from encoders.services.search.config import SearchConfig
from encoders.services.viewer.config import ViewerConfig
from encoders.shared.runtime import RUNTIME_VARIABLES
from encoders.shared.settings import Settings, variables_of
from encoders.shared.storage.config import DatabaseConfig, ServeConfig

ALL_SETTINGS: tuple[type[Settings], ...] = (
    AllInOneConfig,
    IngestConfig,
    EncoderConfig,
    MetricsConfig,
    RecorderConfig,
    ViewerConfig,
    PisimConfig,
    SearchConfig,
    DatabaseConfig,
    ServeConfig,
)
KNOWN_VARIABLES = variables_of(ALL_SETTINGS) | RUNTIME_VARIABLES
