"""Pipeline presets: named recipes that fill in a :class:`~workers.run.manifest.PipelineSpec`.

* ``seed`` -- the Kaggle seed exactly: NL-means, Real-ESRGAN fed BGR, Lanczos resize to a multiple of 8.
* ``standard`` -- the seed's stages done right: RGB feed, no resize; the tone curve if one is given.
* ``quality`` -- best competition PSNR: tone curve, NL-means scaled by the curve's gain, bicubic x4
  (after tone correction a smooth upscaler out-scores the GAN on PSNR; see README).
* ``perceptual`` -- tone curve, NL-means, Real-ESRGAN: the sharpest-looking output.
"""

from __future__ import annotations

from collections.abc import Callable

from workers.errors import ConfigError
from workers.ops.denoise import DenoiseSpec
from workers.ops.tone import ToneCurve
from workers.run.manifest import PipelineSpec

Preset = Callable[[DenoiseSpec, ToneCurve | None], PipelineSpec]


def _tone(curve: ToneCurve | None) -> str:
    return curve.to_json().decode() if curve else ""


def _needs_curve(name: str, curve: ToneCurve | None) -> ToneCurve:
    if curve is None:
        raise ConfigError(
            f"preset {name!r} needs a tone curve: run `producer calibrate DATASET` first, "
            "or pass --calibration PATH (CALIBRATION)"
        )
    return curve


def seed(denoise: DenoiseSpec, curve: ToneCurve | None) -> PipelineSpec:
    if curve is not None:
        raise ConfigError("preset 'seed' reproduces the seed exactly and takes no tone curve")
    if denoise != DenoiseSpec():
        raise ConfigError(
            "preset 'seed' reproduces the seed exactly: NL-means h=7, hColor=7, template 7, search 21; "
            "drop --denoise/--nlm-* (DENOISE, NLM_*) or use --preset standard"
        )
    return PipelineSpec(preset="seed", denoise=denoise, channel_order="bgr", resize_multiple=8)


def standard(denoise: DenoiseSpec, curve: ToneCurve | None) -> PipelineSpec:
    return PipelineSpec(preset="standard", denoise=denoise, tone=_tone(curve))


def quality(denoise: DenoiseSpec, curve: ToneCurve | None) -> PipelineSpec:
    curve = _needs_curve("quality", curve)
    return PipelineSpec(preset="quality", denoise=denoise, upscaler="bicubic", tone=_tone(curve),
                        scale_nlm_by_gain=True)


def perceptual(denoise: DenoiseSpec, curve: ToneCurve | None) -> PipelineSpec:
    return PipelineSpec(preset="perceptual", denoise=denoise, tone=_tone(_needs_curve("perceptual", curve)))


PRESETS: dict[str, Preset] = {"seed": seed, "standard": standard, "quality": quality, "perceptual": perceptual}
NEEDS_CURVE = frozenset({"quality", "perceptual"})
TAKES_CURVE = NEEDS_CURVE | {"standard"}


def build_pipeline(preset: str, denoise: DenoiseSpec, curve: ToneCurve | None = None) -> PipelineSpec:
    """The :class:`PipelineSpec` of ``preset``.

    Raises:
        ConfigError: unknown preset, or a preset that needs a tone curve got none (or vice versa).
    """
    try:
        make = PRESETS[preset]
    except KeyError:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}") from None
    return make(denoise, curve)
