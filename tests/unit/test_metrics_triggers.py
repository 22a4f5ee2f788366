"""Text triggers (issue #15): one event per visit, the model's own frames only, a file checked."""

from __future__ import annotations

import json

import numpy as np
import pytest

from encoders.services.metrics.alerts import AlertRules, Alerts
from encoders.services.metrics.triggers import Trigger, TriggerWatch, load, save
from encoders.shared.runtime import StartupError

DOOR = Trigger("door", "a person at the door", "m", 0.5, np.array([1.0, 0.0, 0.0], np.float32))


def toward(similarity: float) -> np.ndarray:
    """A unit vector at this cosine from DOOR's."""
    return np.array([similarity, np.sqrt(1 - similarity**2), 0.0], np.float32)


def test_one_visit_is_one_event_and_the_trigger_rearms_after_the_holdoff_below():
    watch = TriggerWatch(DOOR, holdoff=5.0)
    sims = [0.1, 0.6, 0.9, 0.7, 0.2, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9]  # a frame a second
    fired = [(t, watch.on_frame(toward(s), "m", float(t))) for t, s in enumerate(sims)]
    # Fires on the way up at t=1; the dip at t=4 (1 s below) is the same visit; re-armed after
    # 5 s below (t=6..11), it fires again at t=12.
    assert [(t, round(v, 3)) for t, v in fired if v is not None] == [(1, 0.6), (12, 0.9)]


def test_frames_of_another_model_are_not_compared():
    assert TriggerWatch(DOOR, 5.0).on_frame(toward(0.9), "other", 0.0) is None


def test_alerts_carry_trigger_events_by_name():
    alerts = Alerts(AlertRules(triggers=(DOOR,), trigger_holdoff=5.0))
    assert alerts.on_record(0.0, None, 40.0, toward(0.8), "m") == {"trigger:door": pytest.approx(0.8, abs=1e-6)}
    assert alerts.on_record(1.0, 0.0, 40.0, toward(0.8), "m") == {}


def test_the_file_round_trips_and_a_bad_one_is_a_startup_error(tmp_path):
    path = tmp_path / "triggers.json"
    save(path, [DOOR])
    (back,) = load(path)
    assert (back.name, back.text, back.model, back.threshold) == ("door", "a person at the door", "m", 0.5)
    np.testing.assert_allclose(back.vector, DOOR.vector)
    bads: list[dict] = [{"triggers": [{"name": "a b", "text": "", "model": "m", "threshold": 0.5, "vector": [1]}]},
                {"triggers": [{"name": "a", "text": "", "model": "m", "threshold": 2, "vector": [1]}]},
                {"triggers": [{"name": "a", "text": "", "model": "m", "threshold": 0.5, "vector": [0, 0]}]},
                {"nothing": []}]  # fmt: skip
    for bad in bads:
        path.write_text(json.dumps(bad))
        with pytest.raises(StartupError, match="ENCODERS_TRIGGERS="):
            load(path)
