"""The device and precision rule (workers/ops/device.py): a pure function, pinned by a table."""

from __future__ import annotations

import json

import pytest

from workers.errors import ConfigError
from workers.ops.device import (
    AGREEMENT_TOLERANCE_DB,
    Bf16Agreement,
    CpuCapabilities,
    agreement_in,
    cached_agreement,
    choose_precision,
    store_agreement,
)

AMX = CpuCapabilities("Xeon", avx512_bf16=True, amx_bf16=True)
AVX512_BF16 = CpuCapabilities("EPYC", avx512_bf16=True)
NO_BF16 = CpuCapabilities("old", avx512_bf16=False)
AGREES = Bf16Agreement("abc", fp32_psnr=35.222, bf16_psnr=35.211, items=18, measured_on="held-out pairs")
LOSES = Bf16Agreement("abc", fp32_psnr=35.222, bf16_psnr=35.150, items=18, measured_on="held-out pairs")
GAINS = Bf16Agreement("abc", fp32_psnr=35.222, bf16_psnr=35.300, items=18, measured_on="held-out pairs")

RULE = [
    # setting, device, cpu, cuda_bf16, agreement, purpose -> dtype, words in the reason
    ("auto", "cpu", AMX, False, AGREES, "inference", "bf16", "AMX"),
    ("auto", "cpu", AVX512_BF16, False, AGREES, "inference", "bf16", "AVX-512 BF16"),
    ("auto", "cpu", AVX512_BF16, False, GAINS, "inference", "bf16", "+0.078 dB"),
    ("auto", "cpu", AVX512_BF16, False, LOSES, "inference", "fp32", "-0.072 dB"),
    ("auto", "cpu", AVX512_BF16, False, None, "inference", "fp32", "not recorded"),
    ("auto", "cpu", NO_BF16, False, AGREES, "inference", "fp32", "no native bf16"),
    ("auto", "cpu", NO_BF16, False, None, "inference", "fp32", "no native bf16"),
    ("auto", "cpu", AVX512_BF16, False, None, "training", "bf16", "autocast"),
    ("auto", "cpu", NO_BF16, False, None, "training", "fp32", "no native bf16"),
    ("auto", "cuda", NO_BF16, True, None, "inference", "bf16", "card"),
    ("auto", "cuda", NO_BF16, False, None, "inference", "fp16", "card"),
    ("auto", "cuda", NO_BF16, True, None, "training", "bf16", "card"),
    ("fp32", "cpu", AMX, False, AGREES, "inference", "fp32", "PRECISION=fp32"),
    ("bf16", "cpu", NO_BF16, False, None, "inference", "bf16", "PRECISION=bf16"),
    ("fp16", "cuda", NO_BF16, True, None, "inference", "fp16", "PRECISION=fp16"),
    ("fp32", "cuda", NO_BF16, True, None, "training", "fp32", "PRECISION=fp32"),
]


@pytest.mark.parametrize(("setting", "device", "cpu", "cuda_bf16", "agreement", "purpose", "dtype", "why"), RULE)
def test_the_precision_rule(setting, device, cpu, cuda_bf16, agreement, purpose, dtype, why):
    choice = choose_precision(setting, device, cpu, cuda_bf16=cuda_bf16, agreement=agreement, purpose=purpose)
    assert choice.dtype == dtype
    assert why in choice.reason


def test_an_unknown_setting_is_refused():
    with pytest.raises(ConfigError, match="PRECISION must be one of"):
        choose_precision("int8", "cpu", AMX)


def test_the_tolerance_is_a_loss_of_at_most_two_hundredths_of_a_db():
    assert AGREEMENT_TOLERANCE_DB == 0.02
    edge = Bf16Agreement("abc", fp32_psnr=35.0, bf16_psnr=35.0 - AGREEMENT_TOLERANCE_DB, items=1, measured_on="x")
    assert edge.agrees and not LOSES.agrees and GAINS.agrees


def test_capabilities_from_proc_cpuinfo():
    text = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nmodel name\t: AMD EPYC\nflags\t: fpu\n"
    assert CpuCapabilities.from_proc_cpuinfo(text) == AVX512_BF16.__class__("AMD EPYC", True, False)
    assert not CpuCapabilities.from_proc_cpuinfo("flags : avx2 avx512f\n").native_bf16
    assert CpuCapabilities.from_proc_cpuinfo("flags : amx_bf16 amx_tile\n").amx_bf16


def test_an_agreement_record_round_trips_and_belongs_to_one_file(tmp_path):
    again = Bf16Agreement.from_dict(json.loads(json.dumps(AGREES.to_dict())))
    assert again == AGREES and again.version == 1
    assert agreement_in({"bf16_agreement": AGREES.to_dict()}, "abc") == AGREES
    assert agreement_in({"bf16_agreement": AGREES.to_dict()}, "another file") is None
    assert agreement_in({"precision": "torch.float32"}, "abc") is None
    store_agreement(tmp_path, AGREES)
    assert cached_agreement(tmp_path, "abc") == AGREES and cached_agreement(tmp_path, "def") is None
    with pytest.raises(ConfigError, match="newer"):
        Bf16Agreement.from_dict({**AGREES.to_dict(), "version": 99})


def test_a_recorded_agreement_is_found_beside_the_file_in_the_registry_or_the_cache(tmp_path):
    from workers.io.models import ModelRegistry, ShippedModel, write_registry
    from workers.ops.device import recorded_agreement

    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    assert recorded_agreement(model, "abc", str(tmp_path)) is None
    registry = ModelRegistry(
        tmp_path, "m", {"m": ShippedModel("m", "m.safetensors", "abc", "Compact", 1, bf16_agreement=AGREES.to_dict())}
    )
    write_registry(registry)
    assert recorded_agreement(model, "abc", str(tmp_path)) == AGREES
    assert recorded_agreement(model, "another file", str(tmp_path)) is None
    (tmp_path / "m.json").write_text(json.dumps({"bf16_agreement": LOSES.to_dict()}))
    assert recorded_agreement(model, "abc", str(tmp_path)) == LOSES  # the provenance beside the file comes first
    cache = tmp_path / "cache"
    store_agreement(cache, Bf16Agreement("def", 30.0, 30.0, 4, "x"))
    assert recorded_agreement(model, "def", str(tmp_path), cache).items == 4
