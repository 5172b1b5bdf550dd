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

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from workers.errors import ConfigError, ObjectNotFoundError
from workers.io.storage import Storage, StorageFactory, split_location

TRAINED_FILE = "trained_x4.safetensors"
PROVENANCE_KIND = "lowlight-sr/training"
PROVENANCE_VERSION = 3


@dataclass(frozen=True)
class Provenance:
    """How a trained checkpoint was made (``<output>.json``): what it started from and learned from, the
    settings, the held-back curve and what the selection saw, the hardware, and the checkpoint's
    measured bf16 agreement with fp32. Version 2 documents (no ``selection``, no agreement) read as well;
    keys this version does not know are kept in ``extra`` and written back."""

    start: dict[str, Any]
    pairs: dict[str, Any]
    photos: dict[str, Any] | None
    holdout: dict[str, Any]
    calibration: dict[str, Any]
    brightness: dict[str, Any]
    config: dict[str, Any]
    seed: int
    steps: int
    best_step: int
    holdout_psnr: float | None
    kept_start: bool
    loss: float | None
    curve: list[dict[str, Any]]
    phase: int
    device: str
    hardware: str
    precision: str
    torch: str
    seconds: float
    finished: bool
    code_version: str
    at: str
    precision_reason: str = ""
    selection: dict[str, Any] = field(default_factory=dict)
    bf16_agreement: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = PROVENANCE_KIND
    version: int = PROVENANCE_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {"kind": data.pop("kind"), "version": data.pop("version"), **data, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Provenance:
        """Raises ConfigError: not a training provenance of a version this code reads."""
        if not isinstance(data, dict) or data.get("kind") != PROVENANCE_KIND:
            raise ConfigError("not a lowlight-sr training provenance document")
        if int(data.get("version", 0)) > PROVENANCE_VERSION:
            raise ConfigError(
                f"provenance version {data.get('version')} is newer than this code's ({PROVENANCE_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        try:
            return cls(
                **{k: v for k, v in data.items() if k in known}, extra={k: v for k, v in data.items() if k not in known}
            )
        except TypeError as exc:
            raise ConfigError(f"malformed training provenance ({exc})") from None

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1).encode()


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

    def write_provenance(self, provenance: Provenance) -> None:
        self.storage.put(self.provenance, provenance.to_json())


def default_output(dataset: str) -> str:
    return f"{dataset.rstrip('/')}/{TRAINED_FILE}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
