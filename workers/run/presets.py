"""Pipeline presets: named recipes that fill in a :class:`~workers.run.manifest.PipelineSpec`.

* ``seed`` -- the Kaggle seed exactly: NL-means, Real-ESRGAN fed BGR, Lanczos resize to a multiple of 8.
* ``standard`` -- the seed's stages done right: RGB feed, no resize; the tone curve if one is given.
* ``quality`` -- calibrated classical stages: the tone curve only where calibration finds input and
  target differ in brightness (then NL-means scaled by the curve's gain), NL-means at the strength
  calibration picked, bicubic x4 (smooth beats invented texture on PSNR).
* ``perceptual`` -- calibrated tone and NL-means as ``quality``, then Real-ESRGAN: the sharpest look.
* ``learned`` -- the dataset's own fine-tuned model (``producer train``) on the raw input: it learned
  the denoising too, so no NL-means unless asked for; optional x8 self-ensemble (``--tta``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from workers.errors import ConfigError
from workers.ops.denoise import DenoiseSpec
from workers.registry import lookup
from workers.run.manifest import PipelineSpec
from workers.training.calibrate import Calibration


@dataclass(frozen=True)
class Checkpoint:
    """A run's own model: its key in the run store and its sha256."""

    key: str
    sha256: str


@dataclass(frozen=True)
class PresetInputs:
    """What a preset builds from: the user's denoiser choice (defaults: the seed's), the dataset's
    calibration and trained model when there are any, and whether to self-ensemble."""

    denoise: DenoiseSpec = DenoiseSpec()
    calibration: Calibration | None = None
    checkpoint: Checkpoint | None = None
    tta: bool = False
    denoise_given: bool = False  # the user named the denoiser or a strength (a flag or its variable)

    @property
    def denoise_chosen(self) -> bool:
        """True when the user asked for a denoiser: named one (even the seed's own settings, which
        ``learned`` would otherwise leave out and the calibrated presets replace), or changed a strength."""
        return self.denoise_given or self.denoise != DenoiseSpec()


Preset = Callable[[PresetInputs], PipelineSpec]
NO_CURVE_HINT = "run `producer calibrate DATASET` first, or pass --calibration PATH (CALIBRATION)"


def _tone(calibration: Calibration | None) -> str:
    curve = calibration.curve if calibration else None
    return curve.to_json().decode() if curve else ""


def _needs_calibration(name: str, inputs: PresetInputs) -> Calibration:
    if inputs.calibration is None:
        raise ConfigError(f"preset {name!r} needs a calibration: {NO_CURVE_HINT}")
    return inputs.calibration


def _no_tta(name: str, inputs: PresetInputs) -> None:
    if inputs.tta:
        raise ConfigError(f"--tta self-ensembles a trained model: use it with --preset learned, not {name!r}")


def _calibrated_denoise(inputs: PresetInputs, calibration: Calibration) -> DenoiseSpec:
    return inputs.denoise if inputs.denoise_chosen else calibration.denoise_spec(inputs.denoise)


def _with_named_model(spec: PipelineSpec, inputs: PresetInputs) -> PipelineSpec:
    """The checkpoint the user named (WEIGHTS / --weights) for a preset that runs Real-ESRGAN: the run's
    own, by hash, in place of the Hub's model."""
    if inputs.checkpoint is None:
        return spec
    return dataclasses.replace(spec, checkpoint=inputs.checkpoint.key, checkpoint_sha256=inputs.checkpoint.sha256)


def seed(inputs: PresetInputs) -> PipelineSpec:
    if inputs.calibration is not None:
        raise ConfigError("preset 'seed' reproduces the seed exactly and takes no tone curve or calibration")
    if inputs.denoise != DenoiseSpec():
        raise ConfigError(
            "preset 'seed' reproduces the seed exactly: NL-means h=7, hColor=7, template 7, search 21; "
            "drop --denoise/--nlm-* (DENOISE, NLM_*) or use --preset standard"
        )
    _no_tta("seed", inputs)
    spec = PipelineSpec(preset="seed", denoise=inputs.denoise, channel_order="bgr", resize_multiple=8)
    return _with_named_model(spec, inputs)


def standard(inputs: PresetInputs) -> PipelineSpec:
    _no_tta("standard", inputs)
    return _with_named_model(PipelineSpec(preset="standard", denoise=inputs.denoise, tone=_tone(inputs.calibration)), inputs)


def quality(inputs: PresetInputs) -> PipelineSpec:
    _no_tta("quality", inputs)
    calibration = _needs_calibration("quality", inputs)
    tone = _tone(calibration)
    spec = _calibrated_denoise(inputs, calibration)
    return PipelineSpec(preset="quality", denoise=spec, upscaler="bicubic", tone=tone,
                        scale_nlm_by_gain=bool(tone) and spec.method == "nlm")


def perceptual(inputs: PresetInputs) -> PipelineSpec:
    _no_tta("perceptual", inputs)
    calibration = _needs_calibration("perceptual", inputs)
    spec = PipelineSpec(preset="perceptual", denoise=_calibrated_denoise(inputs, calibration), tone=_tone(calibration))
    return _with_named_model(spec, inputs)


def learned(inputs: PresetInputs) -> PipelineSpec:
    if inputs.checkpoint is None:
        raise ConfigError("preset 'learned' needs a trained model: run `producer train DATASET` first "
                          "(it writes DATASET/trained_x4.safetensors), or pass --weights PATH")
    denoise = inputs.denoise if inputs.denoise_chosen else DenoiseSpec(method="none")
    return PipelineSpec(preset="learned", denoise=denoise, upscaler="learned", checkpoint=inputs.checkpoint.key,
                        checkpoint_sha256=inputs.checkpoint.sha256, tta=inputs.tta)


PRESETS: dict[str, Preset] = {"seed": seed, "standard": standard, "quality": quality, "perceptual": perceptual,
                              "learned": learned}
NEEDS_CALIBRATION = frozenset({"quality", "perceptual"})
TAKES_CALIBRATION = NEEDS_CALIBRATION | {"standard"}


def build_pipeline(preset: str, inputs: PresetInputs = PresetInputs()) -> PipelineSpec:
    """The :class:`PipelineSpec` of ``preset``.

    Raises:
        ConfigError: unknown preset, or the preset lacks what it needs (calibration, trained model)
            or got what it refuses.
    """
    return lookup("preset", preset, PRESETS)(inputs)
