"""Which GPUs `encoders encode --gpus` starts workers on."""

import pytest

from encoders.services.encoder.gpus import parse_gpus


def test_all_means_every_visible_gpu():
    assert parse_gpus("all", 4) == [0, 1, 2, 3]


def test_a_list_picks_those_once_each():
    assert parse_gpus("2, 0,2", 4) == [0, 2]


@pytest.mark.parametrize(
    "spec,visible,message",
    [
        ("all", 0, "none is visible"),
        ("0,5", 4, "not among the 4 visible"),
        ("first", 2, "takes 'all' or GPU numbers"),
    ],
)
def test_impossible_requests_say_why(spec, visible, message):
    with pytest.raises(ValueError, match=message):
        parse_gpus(spec, visible)
