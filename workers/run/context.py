"""What every stage function gets: settings, the run store, caches and the loaded upscalers."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

from workers.io.imageio import DecodeLimits
from workers.io.storage import Storage, StorageFactory
from workers.io.weights import resolve_weights
from workers.ops.tone import ToneCurve
from workers.ops.upscalers import ImageUpscaler, TilePolicy, upscaler_kind
from workers.run.manifest import PipelineSpec, RunManifest, load_manifest
from workers.settings import Settings


class StageContext:
    """Everything a stage needs, built once per process and shared by its threads.

    Upscalers are loaded on first use (or by :meth:`warm_up` at worker start) and kept; loading
    one that runs a checkpoint is the only thing that imports torch.
    """

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.settings = settings
        self.storages = StorageFactory(settings)
        self.storage = storage or self.storages.open(settings.storage_url)
        self.limits = DecodeLimits.from_settings(settings)
        self.hostname = socket.gethostname()
        self._model_lock = threading.Lock()
        self.io_pool = ThreadPoolExecutor(max_workers=settings.io_threads, thread_name_prefix="store")
        self._upscalers: dict[str, ImageUpscaler] = {}
        self._manifest = lru_cache(maxsize=64)(self._load_manifest)
        self._source = lru_cache(maxsize=64)(self.storages.open)
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
                    ref, s = resolve_weights(self.settings), self.settings
                    self._upscalers[name] = kind.load(
                        ref.path, device=s.device, precision=s.precision, source=ref.source,
                        tiles=TilePolicy(s.tile_max_pixels, s.tile_size, s.tile_overlap))
                else:
                    self._upscalers[name] = kind.load()
            return self._upscalers[name]

    def upscaler_for(self, pipeline: PipelineSpec) -> ImageUpscaler:
        return self.upscaler(pipeline.upscaler)

    def warm_up(self) -> None:
        """Load the worker's model now (GPU workers do at start-up), not on the first image."""
        self.upscaler("model")

    def manifest(self, run_id: str) -> RunManifest:
        # The pipeline and source of a run never change; only the name list can grow on re-enqueue,
        # and stages do not read it.
        return self._manifest(run_id)

    def _load_manifest(self, run_id: str) -> RunManifest:
        return load_manifest(self.storage, run_id)

    def source(self, manifest: RunManifest) -> Storage:
        return self._source(manifest.source)

    def tone_curve(self, pipeline: PipelineSpec) -> ToneCurve | None:
        return self._tone(pipeline.tone) if pipeline.tone else None
