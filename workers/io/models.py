"""The project's own pretrained models: one registry from a name to a file, checked by hash.

``models/registry.json`` (beside ``workers/`` in the repository; ``MODELS_DIR`` elsewhere, e.g. in
the images) lists each shipped model: its file, sha256, architecture, cost and measured quality,
and its provenance document. A model is only ever used by name through :func:`shipped_model`,
which refuses a missing file or one whose bytes do not match the registry: a run never silently
falls back to another model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.errors import ConfigError
from workers.io.weights import file_sha256

REGISTRY_FILE = "registry.json"
REGISTRY_KIND = "lowlight-sr/model-registry"
REPOSITORY_MODELS = Path(__file__).resolve().parents[2] / "models"


@dataclass(frozen=True)
class ShippedModel:
    """One registry entry."""

    name: str
    file: str  # beside registry.json
    sha256: str
    architecture: str
    macs_per_input_pixel: int
    provenance: str = ""  # the training provenance document, beside registry.json
    description: str = ""
    quality: dict[str, Any] = field(default_factory=dict)  # measured PSNR, where and how
    speed: dict[str, Any] = field(default_factory=dict)  # measured images/s, on which machine
    bf16_agreement: dict[str, Any] = field(default_factory=dict)  # bf16 against fp32, measured (workers.ops.device)


@dataclass(frozen=True)
class ModelRegistry:
    folder: Path
    default: str
    models: dict[str, ShippedModel]

    def entry(self, name: str) -> ShippedModel:
        """Raises ConfigError: no model of that name (the message lists the names)."""
        try:
            return self.models[name]
        except KeyError:
            raise ConfigError(f"no shipped model {name!r} in {self.folder / REGISTRY_FILE}; "
                              f"choose one of {sorted(self.models)}") from None

    def path(self, name: str) -> Path:
        """The checked file of model ``name``.

        Raises:
            ConfigError: unknown name, file missing, or its sha256 is not the registry's.
        """
        model = self.entry(name)
        path = self.folder / model.file
        if not path.is_file():
            raise ConfigError(f"shipped model {name!r}: {path} is missing (MODELS_DIR={self.folder})")
        found = file_sha256(path)
        if found != model.sha256:
            raise ConfigError(f"shipped model {name!r}: {path} has sha256 {found[:12]}..., the registry says "
                              f"{model.sha256[:12]}...; refusing to run a model that is not the one registered")
        return path


def models_folder(configured: str = "") -> Path:
    """``MODELS_DIR`` when set, else the repository's ``models/``."""
    return Path(configured).expanduser() if configured else REPOSITORY_MODELS


def load_registry(folder: Path) -> ModelRegistry:
    """Read ``folder/registry.json``.

    Raises:
        ConfigError: missing or malformed registry (one line naming the file).
    """
    location = folder / REGISTRY_FILE
    try:
        document = json.loads(location.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no model registry at {location} (set MODELS_DIR to the folder of registry.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model registry {location}: unreadable ({exc})") from None
    if not isinstance(document, dict) or document.get("kind") != REGISTRY_KIND:
        raise ConfigError(f"model registry {location}: not a {REGISTRY_KIND} document")
    try:
        models = {name: ShippedModel(name=name, **entry) for name, entry in document["models"].items()}
        default = str(document["default"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"model registry {location}: malformed ({type(exc).__name__}: {exc})") from None
    if default not in models:
        raise ConfigError(f"model registry {location}: default {default!r} is not one of its models")
    return ModelRegistry(folder, default, models)


def write_registry(registry: ModelRegistry) -> None:
    """Write ``registry`` back (sorted, stable bytes: it is reviewed in git)."""
    document = {"kind": REGISTRY_KIND, "default": registry.default, "models": {
        name: {k: v for k, v in vars(model).items() if k != "name"} for name, model in sorted(registry.models.items())}}
    (registry.folder / REGISTRY_FILE).write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
