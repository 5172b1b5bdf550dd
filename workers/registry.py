"""The one lookup every registry uses: a table from name to entry, and kombu's words for a name that is
not in it ("No such transport: X. Did you mean Y?").

The tables stay where what they list lives (upscalers in :mod:`workers.ops.upscalers`, storage
backends in :mod:`workers.io.storage`, denoisers in :mod:`workers.ops.denoise`, presets in
:mod:`workers.run.presets`); this module only says how a name is found in one.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TypeVar

from workers.errors import ConfigError

__all__ = ["lookup"]

Entry = TypeVar("Entry")

# How alike a name must be to a registered one to be suggested (difflib's ratio): "s4" for "s3" is 0.5.
SUGGESTION_CUTOFF = 0.5


def lookup(kind: str, name: str, table: Mapping[str, Entry]) -> Entry:
    """The entry of ``table`` registered under ``name``; ``kind`` says what the table lists, for the message.

    Raises:
        ConfigError: no entry has that name: "No such KIND: NAME.", then the closest registered name
            ("Did you mean Y?") where one is close, then every registered name.
    """
    try:
        return table[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(table), n=1, cutoff=SUGGESTION_CUTOFF)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(f"No such {kind}: {name}.{hint} Known: {', '.join(sorted(table))}.") from None
