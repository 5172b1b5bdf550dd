"""workers.runtime.tasks without a worker: the pieces that need no broker."""

from __future__ import annotations

import pytest

from workers.run.attempts import Attempts
from workers.runtime.claims import Claimed
from workers.runtime.holds import new_hold
from workers.runtime.liveness import Holder
from workers.runtime.tasks import image_arguments, isolate_suspects

ME = Holder("t" * 16, "gpu@here", "", 1, "1")


def claimed(name: str, deaths: int = 0, alone: bool = False) -> Claimed:
    return Claimed(name, "go", Attempts(name, "upscale", deaths=deaths, alone=alone), new_hold(name, "upscale", "t", ME))


@pytest.mark.parametrize("args, kwargs", [((), {}), (("r1",), {}), (("r1", 2), {}), (("r1", "a.png"), {"x": 1}),
                                          ("r1a.png", {})])
def test_a_malformed_image_message_is_refused_with_what_it_held(args, kwargs):
    with pytest.raises(ValueError, match="expected \\(run_id, name\\) strings"):
        image_arguments(args, kwargs)


def test_an_image_message_names_a_run_and_an_input():
    assert image_arguments(["r1", "a.png"], {}) == ("r1", "a.png")


def test_suspects_run_alone_after_the_healthy_images_fewest_deaths_first():
    images = [claimed("a"), claimed("b", deaths=2), claimed("c"), claimed("d", alone=True), claimed("e", deaths=1)]
    groups = isolate_suspects(images)
    assert [[image.name for image in group] for group in groups] == [["a", "c"], ["d"], ["e"], ["b"]]
