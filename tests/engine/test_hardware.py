"""Precision, memory format and the CPU split are chosen from the machine (issue 8, items 1-2)."""

import pytest
import torch

from sslkit.config import compose
from sslkit.engine import hardware as hw
from sslkit.errors import ConfigError
from tests.conftest import TinyEncoder

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native, expected", [(False, "32"), (True, "bf16")])
def test_auto_precision_on_cpu_follows_onednn_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(hw, "cpu_capability", lambda: "AVX2")
    assert hw.cpu_has_native_bf16() is native
    assert hw.resolve_precision("auto", CPU) == expected


def test_amx_counts_as_native_bf16(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(hw, "cpu_capability", lambda: "AVX512_AMX")
    assert hw.resolve_precision("auto", CPU) == "bf16"


@pytest.mark.parametrize("native, expected", [(False, "32"), (True, "bf16")])
def test_auto_precision_on_cuda_follows_bf16_support(monkeypatch, native, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: native)
    assert hw.resolve_precision("auto", CUDA) == expected


def test_explicit_precision_is_kept_and_emulated_bf16_warns(monkeypatch):
    monkeypatch.setattr(hw, "cpu_has_native_bf16", lambda: False)
    assert hw.resolve_precision("bf16", CPU) == "bf16"
    warning = hw.precision_warning("bf16", CPU)
    assert warning is not None and "\n" not in warning and "slower" in warning
    assert hw.precision_warning("32", CPU) is None
    monkeypatch.setattr(hw, "cpu_has_native_bf16", lambda: True)
    assert hw.precision_warning("bf16", CPU) is None
    with pytest.raises(ConfigError, match="trainer.precision"):
        hw.resolve_precision("bf32", CPU)


def test_channels_last_auto():
    assert hw.resolve_channels_last("auto", CUDA, lambda: False) is True
    assert hw.resolve_channels_last("auto", CPU, lambda: True) is True
    assert hw.resolve_channels_last("auto", CPU, lambda: False) is False
    assert hw.resolve_channels_last(False, CUDA, lambda: True) is False  # explicit wins
    assert hw.resolve_channels_last(True, CPU, lambda: False) is True
    with pytest.raises(ConfigError, match="channels_last"):
        hw.resolve_channels_last("maybe", CPU)


@pytest.mark.parametrize("nhwc_seconds, expected", [(0.5, True), (0.97, False), (1.5, False)])
def test_probe_picks_the_faster_layout(monkeypatch, nhwc_seconds, expected):
    def fake_seconds(model, x, bf16):
        return nhwc_seconds if x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1 else 1.0

    monkeypatch.setattr(hw, "_seconds", fake_seconds)
    monkeypatch.setattr(hw, "_PROBED", {})
    assert hw.probe_channels_last(TinyEncoder(), 8, 4, 2, 0.05) is expected


@pytest.mark.parametrize("bf16_seconds, expected", [(0.5, True), (0.97, False), (3.0, False)])
def test_the_bf16_probe_picks_bf16_only_where_it_is_faster(monkeypatch, bf16_seconds, expected):
    seen = []

    def fake_seconds(model, x, bf16):
        seen.append(bf16)
        return bf16_seconds if bf16 else 1.0

    monkeypatch.setattr(hw, "_seconds", fake_seconds)
    monkeypatch.setattr(hw, "_PROBED", {})
    assert hw.probe_bf16(TinyEncoder(), 8, 4, 2, 0.05) is expected
    assert seen.count(True) == seen.count(False) == 3  # a warm-up and two rounds of each, interleaved
    hw.probe_bf16(TinyEncoder(), 8, 4, 2, 0.05)
    assert len(seen) == 6  # kept for the process: the same model is not timed twice


def test_the_real_bf16_probe_times_both_precisions():
    """The probe's own timing path (no fake): it runs fp32 and bf16 autocast on any CPU."""
    hw._PROBED.clear()
    assert hw.probe_bf16(TinyEncoder(4), 8, 4, rounds=1) in (True, False)


@pytest.mark.parametrize("forced, faster, expected", [("native", True, "bf16"), ("native", False, "32"),
                                                      ("none", True, "32"), ("none", False, "32")])
def test_injected_cpu_kind_decides_auto_precision(monkeypatch, forced, faster, expected):
    """SSLKIT_CPU_BF16 makes any CPU decide as a native-BF16 one or as one without, no torch patched."""
    monkeypatch.setenv(hw.CPU_BF16_ENV, forced)
    assert hw.cpu_has_native_bf16() is (forced == "native")
    assert hw.resolve_precision("auto", CPU, lambda: faster) == expected
    cfg = compose(["trainer.max_steps=100"])
    before = torch.get_num_threads()
    try:
        machine = hw.fit_to_machine(cfg, CPU, TinyEncoder(), wants_workers=False, probe=lambda: False,
                                    precision_probe=lambda: faster)
    finally:
        torch.set_num_threads(before)
    assert machine.precision == expected and cfg.trainer.precision == "auto"  # the config is only read
    assert f"precision {expected}," in machine.describe() and f"SSLKIT_CPU_BF16={forced}" in machine.describe()
    if forced == "native":
        assert f"timed probe: {'bf16' if faster else 'fp32'} faster" in machine.describe()


def test_a_short_run_on_a_native_cpu_takes_bf16_untimed(monkeypatch):
    monkeypatch.setenv(hw.CPU_BF16_ENV, "native")
    monkeypatch.setattr(hw, "probe_bf16", lambda *a, **k: pytest.fail("timed a 3-step run"))
    before = torch.get_num_threads()
    try:
        machine = hw.fit_to_machine(compose(["trainer.max_steps=3"]), CPU, TinyEncoder(), wants_workers=False)
    finally:
        torch.set_num_threads(before)
    assert machine.precision == "bf16" and "too short to time it" in machine.how


def test_an_invalid_injection_is_one_line(monkeypatch):
    monkeypatch.setenv(hw.CPU_BF16_ENV, "amx")
    with pytest.raises(ConfigError, match="SSLKIT_CPU_BF16='amx' is invalid; valid: native, none"):
        hw.cpu_has_native_bf16()


def test_cpu_split_arithmetic():
    # two cores or fewer: the main process decodes, every core runs the model (measured faster)
    assert hw.cpu_split(2, wants_workers=True) == hw.CpuSplit(threads=2, workers=0)
    assert hw.cpu_split(2, wants_workers=False) == hw.CpuSplit(threads=2, workers=0)
    assert hw.cpu_split(1, wants_workers=True) == hw.CpuSplit(threads=1, workers=0)
    # more cores: half of them (rounded down) decode
    assert hw.cpu_split(3, wants_workers=True) == hw.CpuSplit(threads=2, workers=1)
    assert hw.cpu_split(16, wants_workers=True) == hw.CpuSplit(threads=8, workers=8)
    assert hw.cpu_split(7, wants_workers=True) == hw.CpuSplit(threads=4, workers=3)
    assert hw.cpu_split(16, wants_workers=False) == hw.CpuSplit(threads=16, workers=0)
    # one of the two given: the other takes what is left
    assert hw.cpu_split(8, True, threads=6) == hw.CpuSplit(threads=6, workers=2)
    assert hw.cpu_split(8, True, workers=3) == hw.CpuSplit(threads=5, workers=3)
    assert hw.cpu_split(2, True, threads=2) == hw.CpuSplit(threads=2, workers=0)
    # both given: the user's choice, even if it oversubscribes
    assert hw.cpu_split(2, True, threads=4, workers=4) == hw.CpuSplit(threads=4, workers=4)
    for cores in range(1, 65):
        for wants in (True, False):
            split = hw.cpu_split(cores, wants)
            assert split.threads >= 1 and split.threads + split.workers <= cores, (cores, wants, split)
            assert split.threads + split.workers == cores  # and no core is left idle


def test_apply_cpu_split_sets_torch_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        split = hw.apply_cpu_split(CPU, wants_workers=True, cores=4)
        assert split == hw.CpuSplit(2, 2) and torch.get_num_threads() == 2
        split = hw.apply_cpu_split(CPU, wants_workers=False, threads=None, workers=0, cores=2)
        assert split == hw.CpuSplit(2, 0) and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # set by the user: counts as trainer.threads
        assert hw.apply_cpu_split(CPU, wants_workers=True, cores=4) == hw.CpuSplit(1, 2)
        assert hw.apply_cpu_split(CPU, wants_workers=True, threads=3, cores=4) == hw.CpuSplit(3, 1)
    finally:
        torch.set_num_threads(before)


def test_fit_to_machine_returns_the_resolved_values_and_leaves_the_config_alone(monkeypatch):
    monkeypatch.setattr(hw, "cpu_has_native_bf16", lambda: False)
    cfg = compose([])
    assert cfg.trainer.precision == "auto" and cfg.trainer.channels_last == "auto"
    before = torch.get_num_threads()
    try:
        machine = hw.fit_to_machine(cfg, CPU, TinyEncoder(), wants_workers=False, probe=lambda: True)
    finally:
        torch.set_num_threads(before)
    assert (machine.precision, machine.channels_last) == ("32", True)
    assert cfg.trainer.precision == "auto" and cfg.trainer.channels_last == "auto"  # read-only: the plan records them
    assert machine.warning is None and "precision 32" in machine.describe()


def test_short_cpu_runs_skip_the_layout_probe(monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("probed")

    monkeypatch.setattr(hw, "probe_channels_last", no_probe)
    before = torch.get_num_threads()
    try:
        machine = hw.fit_to_machine(compose(["trainer.max_steps=3"]), CPU, TinyEncoder(), wants_workers=False)
    finally:
        torch.set_num_threads(before)
    assert machine.channels_last is False and "too short" in machine.how


def test_the_layout_probe_times_the_runs_own_batch(monkeypatch):
    seen = []
    monkeypatch.setattr(hw, "probe_channels_last", lambda model, size, batch, **kw: seen.append((size, batch)) or True)
    before = torch.get_num_threads()
    try:
        for overrides in (["data.batch_size=256", "data.image_size=32"], ["data.batch_size=64", "data.image_size=32"],
                          ["data.batch_size=256", "data.image_size=224"]):
            hw.fit_to_machine(compose(overrides), CPU, TinyEncoder(), wants_workers=False)
    finally:
        torch.set_num_threads(before)
    # the run's batch at 32 px (not a fixed 32 images); capped at 256 x (32/size)^2 images for larger ones
    assert seen == [(32, 256), (32, 64), (224, 5)]
    assert hw._probe_batch(8, 1) == 2  # never fewer than 2 images (batch norm needs them)
