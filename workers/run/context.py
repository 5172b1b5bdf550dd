"""What every stage function gets: settings, the run store, caches and the loaded upscalers."""

from __future__ import annotations

import json
import socket
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

from workers.errors import ObjectNotFoundError
from workers.io.imageio import DecodeLimits
from workers.io.storage import Storage, StorageFactory
from workers.io.weights import fetch_checkpoint, model_cache_dir, resolve_weights
from workers.ops.device import Bf16Agreement, agreement_in
from workers.ops.tone import ToneCurve
from workers.ops.upscalers import ImageUpscaler, TilePolicy, upscaler_kind
from workers.run.keys import RunKeys
from workers.run.manifest import PipelineSpec, RunManifest, load_manifest
from workers.run.resolve import provenance_key
from workers.settings import Settings

MANIFEST_CACHE_SIZE = 64  # runs whose manifest a process keeps


class StageContext:
    """Everything a stage needs, built once per process and shared by its threads.

    Upscalers are loaded on first use (or by :meth:`warm_up`, which benchmarks call) and kept;
    loading one that runs a checkpoint is the only thing that imports torch.
    """

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.settings = settings
        self.storages = StorageFactory(settings)
        self.storage = storage or self.storages.open(settings.storage_url)
        self.limits = DecodeLimits.from_settings(settings)
        self.hostname = socket.gethostname()
        self._model_lock = threading.Lock()
        self._manifest_lock = threading.Lock()
        self.io_pool = ThreadPoolExecutor(max_workers=settings.io_threads, thread_name_prefix="store")
        self._upscalers: dict[str, ImageUpscaler] = {}
        self._run_models: OrderedDict[str, ImageUpscaler] = OrderedDict()  # by checkpoint sha256, LRU
        self._manifests: OrderedDict[str, tuple[str, RunManifest]] = OrderedDict()  # run -> (version, manifest)
        self._source = lru_cache(maxsize=64)(self.storages.open_source)
        self._tone = lru_cache(maxsize=16)(lambda text: ToneCurve.from_json(text.encode()))

    def upscaler(self, name: str = "model") -> ImageUpscaler:
        """The upscaler registered as ``name``, loaded once per process.

        Raises:
            ConfigError: unknown name; the worker's weights cannot be found or are not a 4x RGB model.
        """
        kind = upscaler_kind(name)
        with self._model_lock:
            if name not in self._upscalers:
                if kind.runs_checkpoint:
                    ref = resolve_weights(self.settings)
                    self._upscalers[name] = kind.load(ref.path, source=ref.source, **self._model_options())
                else:
                    self._upscalers[name] = kind.load()
            return self._upscalers[name]

    def upscaler_for(self, pipeline: PipelineSpec) -> ImageUpscaler:
        """The upscaler a run's pipeline names: the run's own checkpoint by hash when it has one (always
        for ``learned``; for the Real-ESRGAN presets when the user named one), else this worker's.

        Raises:
            TransientError: the run's checkpoint could not be fetched, or the copy in the store does
                not have the sha256 the manifest names (the image waits rather than meet the wrong model).
            ConfigError: as :meth:`upscaler`.
        """
        if not pipeline.checkpoint_sha256:
            return self.upscaler(pipeline.upscaler)
        with self._model_lock:
            cached = self._run_models.pop(pipeline.checkpoint_sha256, None)
            if cached is None:
                cached = self._load_run_model(pipeline)
            self._run_models[pipeline.checkpoint_sha256] = cached  # most recently used last
            while len(self._run_models) > self.settings.model_cache_size:
                self._run_models.popitem(last=False)
            return cached

    def _load_run_model(self, pipeline: PipelineSpec) -> ImageUpscaler:
        path = fetch_checkpoint(self.storage, pipeline.checkpoint, pipeline.checkpoint_sha256, self.model_cache_dir)
        return upscaler_kind(pipeline.upscaler).load(path, source=f"run:{pipeline.checkpoint}",
                                                     agreement=self._run_model_agreement(pipeline.checkpoint_sha256),
                                                     **self._model_options())

    def _run_model_agreement(self, sha256: str) -> Bf16Agreement | None:
        """The bf16 agreement the published model's provenance records (the registry and the local cache
        are looked at by the loader when it has none)."""
        try:
            return agreement_in(json.loads(self.storage.get(provenance_key(sha256))), sha256)
        except (ObjectNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None

    def _model_options(self) -> dict[str, object]:
        """How every checkpoint is run here: device, precision (and where bf16 agreements are recorded), tiling,
        cuDNN autotuning, torch.compile."""
        s = self.settings
        return {"device": s.device, "precision": s.precision, "cudnn_benchmark": s.cudnn_benchmark,
                "compile_mode": s.torch_compile, "tiles": TilePolicy(s.tile_max_pixels, s.tile_size, s.tile_overlap),
                "models_dir": s.models_dir, "agreement_cache": self.model_cache_dir / "agreement"}

    @property
    def model_cache_dir(self) -> Path:
        return model_cache_dir(self.settings)

    def loaded(self) -> list[dict[str, str]]:
        """What each model loaded in this process runs (model, device, precision and why)."""
        with self._model_lock:
            return [u.describe() for u in [*self._upscalers.values(), *self._run_models.values()]]

    def warm_up(self) -> None:
        """Load the settings' own model (WEIGHTS or the Hub's) now, not on the first image."""
        self.upscaler("model")

    def manifest(self, run_id: str) -> RunManifest:
        """The run's manifest, read again whenever it was replaced: a run enqueued again may name
        another source (``--run NAME`` reused for the next batch), other inputs or other bytes for
        them. One version check per call (a ``stat`` locally, a HEAD on S3), the manifest itself
        only when it changed.

        Raises:
            RunNotFoundError: no such run.
            TransientError: the store could not be reached.
        """
        try:
            version = self.storage.version(RunKeys(run_id).manifest)
        except ObjectNotFoundError:
            return load_manifest(self.storage, run_id)  # raises RunNotFoundError, naming the store
        with self._manifest_lock:
            cached = self._manifests.get(run_id)
            if cached is not None and cached[0] == version:
                self._manifests.move_to_end(run_id)
                return cached[1]
        manifest = load_manifest(self.storage, run_id)
        with self._manifest_lock:
            self._manifests[run_id] = (version, manifest)
            while len(self._manifests) > MANIFEST_CACHE_SIZE:
                self._manifests.popitem(last=False)
        return manifest

    def is_current(self, manifest: RunManifest) -> bool:
        """Whether ``manifest`` is still its run's: not replaced since this context read it. A stage
        asks before it marks its work done, so that nothing made from what a replaced manifest named
        (another source's bytes) is kept as the new one's.

        Raises:
            TransientError: the store could not be reached.
        """
        try:
            version = self.storage.version(RunKeys(manifest.run_id).manifest)
        except ObjectNotFoundError:
            return False
        with self._manifest_lock:
            cached = self._manifests.get(manifest.run_id)
        return cached is not None and cached[1] is manifest and cached[0] == version

    def source(self, manifest: RunManifest) -> Storage:
        return self._source(manifest.source)

    def tone_curve(self, pipeline: PipelineSpec) -> ToneCurve | None:
        return self._tone(pipeline.tone) if pipeline.tone else None
