"""workers.registry.lookup: the one way every registry finds a name, and says what it does not know."""

from __future__ import annotations

import pytest

from workers.errors import ConfigError
from workers.registry import lookup

TABLE = {"file": "local", "s3": "object store", "memory": "in process"}


def test_a_registered_name_gives_its_entry() -> None:
    assert lookup("storage backend", "s3", TABLE) == "object store"


def test_a_near_miss_gets_the_closest_name_and_every_known_one() -> None:
    with pytest.raises(ConfigError) as raised:
        lookup("storage backend", "s4", TABLE)
    assert str(raised.value) == "No such storage backend: s4. Did you mean s3? Known: file, memory, s3."


def test_a_name_like_none_of_them_gets_the_known_ones_only() -> None:
    with pytest.raises(ConfigError) as raised:
        lookup("storage backend", "ftp", TABLE)
    assert str(raised.value) == "No such storage backend: ftp. Known: file, memory, s3."


def test_the_suggestion_is_a_config_error_without_the_key_error_behind_it() -> None:
    with pytest.raises(ConfigError) as raised:
        lookup("preset", "fats", {"fast": 1})
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
