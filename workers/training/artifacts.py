"""Where a training run keeps its outputs, and the small JSON documents beside the checkpoint.

For an output ``DATASET/trained_x4.safetensors`` (the default)::

    trained_x4.safetensors         the best weights so far (EMA), what `--preset learned` runs
    trained_x4.json                provenance: start checkpoint and pairs hashes, calibration, config,
                                   steps, seed, loss, the held-back PSNR curve, code version
    trained_x4.safetensors.state   everything needed to resume (weights, EMA, optimiser, step, RNG)

All three live in one storage folder (a local directory or an object store), so a training task on
a GPU worker and ``producer train`` on a laptop read and write the same way. No torch here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.storage import Storage, StorageFactory, split_location

TRAINED_FILE = "trained_x4.safetensors"
PROVENANCE_KIND = "lowlight-sr/training"


@dataclass(frozen=True)
class TrainingOutput:
    """The storage folder and file name of a training run's checkpoint, and its companions' names."""

    storage: Storage
    name: str  # e.g. trained_x4.safetensors

    @classmethod
    def at(cls, location: str, storages: StorageFactory) -> TrainingOutput:
        folder, name = split_location(location)
        if not name.endswith(".safetensors"):
            raise ConfigError(f"training output {location!r} must be a .safetensors file")
        return cls(storages.open(folder), name)

    @property
    def provenance(self) -> str:
        return self.name.removesuffix(".safetensors") + ".json"

    @property
    def state(self) -> str:
        return self.name + ".state"

    def url(self) -> str:
        return self.storage.url(self.name)

    def read_provenance(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.storage.get(self.provenance))
        except ObjectNotFoundError:
            return None


def default_output(dataset: str) -> str:
    return f"{dataset.rstrip('/')}/{TRAINED_FILE}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
