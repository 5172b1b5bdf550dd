"""One rule for where a model runs and in which precision: the upscaler, the trainer and the benchmarks ask here.

``PRECISION=auto`` means:

* on CUDA: bf16 where the card runs it natively (Ampere and later: fp32's range, so no overflow), else fp16;
* on a CPU, for inference: bf16 where the processor runs it natively (AMX or AVX-512 BF16, as cpuinfo
  reports them through torch) *and* the model's bf16 output has been measured to agree with its fp32
  output on quality (competition PSNR against the ground truth on held-back images, a loss of at most
  :data:`AGREEMENT_TOLERANCE_DB`), recorded once per model file (:class:`Bf16Agreement`, keyed by the
  file's sha256: in the model's provenance, the shipped-model registry, or the agreement cache);
  fp32 everywhere else. Emulated bf16 is slower than fp32, and an unmeasured model stays exact;
* on a CPU, for training: bf16 autocast where the processor runs it natively, fp32 elsewhere. The
  held-back scoring that selects the checkpoint, and the weights saved, stay fp32.

An explicit ``fp32``, ``bf16`` or ``fp16`` is always honoured. :func:`choose_precision` is the rule, a pure
function of its arguments; :class:`PrecisionChoice` carries the answer and the reason, which the log and
the run report show.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from workers.errors import ConfigError

logger = logging.getLogger(__name__)

Setting = Literal["auto", "fp32", "bf16", "fp16"]
DtypeName = Literal["fp32", "bf16", "fp16"]
Purpose = Literal["inference", "training"]
SETTINGS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
# A model runs in bf16 by default only where bf16 costs at most this much competition PSNR against fp32.
AGREEMENT_TOLERANCE_DB = 0.02
AGREEMENT_KIND = "lowlight-sr/bf16-agreement"
AGREEMENT_VERSION = 1
AGREEMENT_FIELD = "bf16_agreement"  # where a provenance document or a registry entry holds one


@dataclass(frozen=True)
class CpuCapabilities:
    """What the processor runs natively, for the precision rule."""

    name: str = "CPU"
    avx512_bf16: bool = False
    amx_bf16: bool = False

    @property
    def native_bf16(self) -> bool:
        return self.avx512_bf16 or self.amx_bf16

    def describe(self) -> str:
        units = [label for label, has in (("AMX", self.amx_bf16), ("AVX-512 BF16", self.avx512_bf16)) if has]
        return f"{self.name}: " + (" and ".join(units) + " (native bf16)" if units else "no native bf16")

    @classmethod
    def detect(cls) -> CpuCapabilities:
        """This machine's, from cpuinfo as torch reports it (``torch.backends.cpu``), else ``/proc/cpuinfo``."""
        try:
            import torch

            found = torch._C._cpu._get_cpu_capability()
            return cls(str(found.get("cpu_name") or "CPU"), bool(found.get("avx512_bf16")), bool(found.get("amx_bf16")))
        except (ImportError, AttributeError, RuntimeError):
            return cls.from_proc_cpuinfo(_read("/proc/cpuinfo"))

    @classmethod
    def from_proc_cpuinfo(cls, text: str) -> CpuCapabilities:
        name, flags = "CPU", set[str]()
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
        return cls(name, "avx512_bf16" in flags, "amx_bf16" in flags)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


@dataclass(frozen=True)
class Bf16Agreement:
    """How a model file's bf16 output scores against its fp32 output, measured once, on quality.

    ``fp32_psnr`` and ``bf16_psnr``: mean competition PSNR against the ground truth over ``items``
    held-back images (``measured_on`` says which); the model file is ``sha256``.
    """

    sha256: str
    fp32_psnr: float
    bf16_psnr: float
    items: int
    measured_on: str
    tolerance_db: float = AGREEMENT_TOLERANCE_DB
    cpu: str = ""
    at: str = ""
    kind: str = AGREEMENT_KIND
    version: int = AGREEMENT_VERSION

    @property
    def loss_db(self) -> float:
        """What bf16 costs (negative: it scored higher)."""
        return self.fp32_psnr - self.bf16_psnr

    @property
    def agrees(self) -> bool:
        return round(self.loss_db, 6) <= self.tolerance_db  # the scores are rounded to 5 decimals

    def describe(self) -> str:
        return (
            f"bf16 scores {-self.loss_db:+.3f} dB against fp32 on {self.items} {self.measured_on} "
            f"(tolerance {self.tolerance_db} dB)"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bf16Agreement:
        """Raises ConfigError: not an agreement record of a version this code reads."""
        if not isinstance(data, dict) or data.get("kind", AGREEMENT_KIND) != AGREEMENT_KIND:
            raise ConfigError("not a bf16 agreement record")
        if int(data.get("version", 0)) > AGREEMENT_VERSION:
            raise ConfigError(f"bf16 agreement record version {data.get('version')} is newer than this code's")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise ConfigError(f"malformed bf16 agreement record ({exc})") from None


@dataclass(frozen=True)
class PrecisionChoice:
    """What runs, and why (for the log, the per-image record and the report)."""

    dtype: DtypeName
    reason: str

    def torch_dtype(self) -> Any:
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.dtype]


def choose_precision(
    setting: str,
    device_type: str,
    cpu: CpuCapabilities,
    *,
    cuda_bf16: bool = False,
    agreement: Bf16Agreement | None = None,
    purpose: Purpose = "inference",
) -> PrecisionChoice:
    """The precision a model runs in (see the module's docstring). Pure: no device is touched.

    ``device_type``: ``"cpu"`` or ``"cuda"``; ``cuda_bf16``: the card runs bf16 natively;
    ``agreement``: the model file's recorded :class:`Bf16Agreement` (inference on a CPU only).

    Raises:
        ConfigError: ``setting`` is not one of :data:`SETTINGS`.
    """
    if setting not in SETTINGS:
        raise ConfigError(f"PRECISION must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting != "auto":
        return PrecisionChoice(setting, f"PRECISION={setting}")  # type: ignore[arg-type]
    if device_type == "cuda":
        if cuda_bf16:
            return PrecisionChoice("bf16", "auto: the card runs bf16 natively (fp32's range, no overflow)")
        return PrecisionChoice("fp16", "auto: the card has no native bf16")
    if not cpu.native_bf16:
        return PrecisionChoice("fp32", f"auto: {cpu.describe()}")
    if purpose == "training":
        return PrecisionChoice("bf16", f"auto: {cpu.describe()}; bf16 autocast, held-back scoring in fp32")
    if agreement is None:
        return PrecisionChoice(
            "fp32", f"auto: {cpu.describe()}, but this model's bf16 agreement with fp32 is not recorded"
        )
    if not agreement.agrees:
        return PrecisionChoice("fp32", f"auto: {cpu.describe()}, but {agreement.describe()}")
    return PrecisionChoice("bf16", f"auto: {cpu.describe()}, and {agreement.describe()}")


# -- where agreements are recorded ---------------------------------------------------------------------


def agreement_in(document: Any, sha256: str) -> Bf16Agreement | None:
    """The agreement recorded in a provenance document or a registry entry (its ``bf16_agreement``), if
    it is for the file ``sha256``; None otherwise (absent, another file's, or unreadable)."""
    record = document.get(AGREEMENT_FIELD) if isinstance(document, dict) else None
    if not isinstance(record, dict) or not record:
        return None
    try:
        found = Bf16Agreement.from_dict(record)
    except ConfigError:
        logger.warning("ignoring an unreadable bf16 agreement record for %s", sha256[:12])
        return None
    return found if found.sha256 == sha256 else None


def cached_agreement(cache_dir: Path, sha256: str) -> Bf16Agreement | None:
    """The agreement measured for ``sha256`` and stored in ``cache_dir`` (see :func:`store_agreement`)."""
    path = cache_dir / f"{sha256}.bf16.json"
    try:
        return agreement_in({AGREEMENT_FIELD: json.loads(path.read_text())}, sha256)
    except (OSError, json.JSONDecodeError):
        return None


def store_agreement(cache_dir: Path, agreement: Bf16Agreement) -> Path:
    """Keep ``agreement`` for its model file in ``cache_dir``, by the file's sha256."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{agreement.sha256}.bf16.json"
    path.write_text(json.dumps(agreement.to_dict(), indent=1) + "\n")
    return path


def provenance_agreement(checkpoint: Path, sha256: str) -> Bf16Agreement | None:
    """The agreement in the provenance document beside ``checkpoint`` (``X.safetensors`` -> ``X.json``)."""
    try:
        return agreement_in(json.loads(checkpoint.with_suffix(".json").read_text()), sha256)
    except (OSError, json.JSONDecodeError):
        return None


def recorded_agreement(
    checkpoint: Path, sha256: str, models_dir: str = "", cache_dir: Path | None = None
) -> Bf16Agreement | None:
    """The bf16 agreement recorded anywhere for the model file ``sha256``: the provenance beside
    ``checkpoint``, the shipped-model registry (``MODELS_DIR``) or ``cache_dir``; None when nowhere."""
    from workers.io.models import load_registry, models_folder

    found = provenance_agreement(checkpoint, sha256)
    if found is None:
        try:
            registry = load_registry(models_folder(models_dir))
        except ConfigError:
            registry = None
        for entry in registry.models.values() if registry else ():
            if entry.sha256 == sha256:
                found = agreement_in({AGREEMENT_FIELD: entry.bf16_agreement}, sha256)
    if found is None and cache_dir is not None:
        found = cached_agreement(cache_dir, sha256)
    return found
