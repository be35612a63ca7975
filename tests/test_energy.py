"""Energy meters: RAPL over a fake powercap tree, the labelled estimate, NVML absence, and the choice."""

from __future__ import annotations

import os
import time

import pytest

import edgeinfer.energy as energy
from edgeinfer.energy import CombinedMeter, EstimateMeter, MeterUnavailable, RaplMeter, open_meter
from edgeinfer.energy import nvml as nvml_mod
from edgeinfer.energy import rapl as rapl_mod
from edgeinfer.energy.rapl import energy_delta_uj, find_domains


def make_zone(root, zone, name, energy_uj, max_uj=1_000_000_000):
    d = root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def set_uj(zone_dir, value):
    tmp = zone_dir / "energy_uj.tmp"  # atomic, as the kernel's reads are: the poller never sees half a number
    tmp.write_text(f"{value}\n")
    os.replace(tmp, zone_dir / "energy_uj")


@pytest.fixture
def powercap(tmp_path, monkeypatch):
    root = tmp_path / "powercap"
    root.mkdir()
    (root / "intel-rapl").mkdir()  # the control-type directory, not a zone
    monkeypatch.setattr(rapl_mod, "POWERCAP_ROOT", str(root))
    return root


def test_delta_wraps():
    assert energy_delta_uj(100, 350, 1000) == 250
    assert energy_delta_uj(900, 50, 1000) == 150  # wrapped once
    assert energy_delta_uj(5, 5, 1000) == 0


def test_rapl_sums_packages_only(powercap):
    p0 = make_zone(powercap, "intel-rapl:0", "package-0", 1_000)
    p1 = make_zone(powercap, "intel-rapl:1", "package-1", 5_000)
    core = make_zone(powercap, "intel-rapl:0:0", "core", 0)  # inside package 0: not added again
    psys = make_zone(powercap, "intel-rapl:2", "psys", 0)  # whole platform: would double count
    meter = RaplMeter(poll_s=0)
    assert [d.name for d in meter.domains] == ["package-0", "package-1"]
    with meter.measure() as m:
        set_uj(p0, 3_001_000)  # +3 J
        set_uj(p1, 2_005_000)  # +2 J
        set_uj(core, 999_000_000)
        set_uj(psys, 999_000_000)
    assert m.source == "rapl" and m.joules == pytest.approx(5.0) and m.seconds >= 0
    assert m.parts == {"intel-rapl:0": pytest.approx(3.0), "intel-rapl:1": pytest.approx(2.0)}
    assert "RAPL" in m.note and not m.is_estimate


def test_rapl_wraparound(powercap):
    p0 = make_zone(powercap, "intel-rapl:0", "package-0", 999_000_000, max_uj=1_000_000_000)
    meter = RaplMeter(poll_s=0)
    with meter.measure() as m:
        set_uj(p0, 500_000)  # wrapped: 1 J to the top, 0.5 J after
    assert m.joules == pytest.approx(1.5)


def test_rapl_polling_sees_several_wraps(powercap):
    p0 = make_zone(powercap, "intel-rapl:0", "package-0", 0, max_uj=1_000_000)
    meter = RaplMeter(poll_s=0.01)
    with meter.measure() as m:
        for value in (600_000, 200_000, 800_000, 400_000):  # 0.6 + 0.6 + 0.6 + 0.6 J, two wraps
            set_uj(p0, value)
            time.sleep(0.1)
    assert m.joules == pytest.approx(2.4)


def test_amd_zone_name_accepted(powercap):
    make_zone(powercap, "amd-rapl:0", "package-0", 0)
    assert [d.path.name for d in find_domains()] == ["amd-rapl:0"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_rapl_unreadable_is_unavailable(powercap):
    make_zone(powercap, "intel-rapl:0", "package-0", 10)
    locked = make_zone(powercap, "intel-rapl:1", "package-1", 10)
    (locked / "energy_uj").chmod(0o000)
    try:
        with pytest.raises(MeterUnavailable, match="permission denied"):
            RaplMeter()
        meter = open_meter("cpu")  # a partial sum would understate: fall back to the estimate
        assert isinstance(meter, EstimateMeter) and "permission denied" in meter.note
    finally:
        (locked / "energy_uj").chmod(0o644)


def test_rapl_unreadable_by_permission_error(powercap, monkeypatch):  # also when running as root
    make_zone(powercap, "intel-rapl:0", "package-0", 10)

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rapl_mod.RaplDomain, "read_uj", denied)
    with pytest.raises(MeterUnavailable, match="permission denied"):
        RaplMeter()
    meter = open_meter("cpu")
    assert meter.source == "estimate" and "permission denied" in meter.note


def test_rapl_missing_or_empty(powercap, monkeypatch):
    with pytest.raises(MeterUnavailable, match="no RAPL package domains"):
        RaplMeter()
    monkeypatch.setattr(rapl_mod, "POWERCAP_ROOT", str(powercap / "nope"))
    with pytest.raises(MeterUnavailable, match="missing"):
        RaplMeter()


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


def test_estimate_proportional_to_cpu_time(monkeypatch):
    monkeypatch.delenv("EDGEINFER_WATTS_PER_CORE", raising=False)
    meter = EstimateMeter()
    assert meter.watts_per_core == 10.0 and "10 W per busy core" in meter.note
    with meter.measure() as short:
        burn(0.05)
    with meter.measure() as long:
        burn(0.2)
    assert short.source == long.source == "estimate" and long.is_estimate
    assert short.joules == pytest.approx(0.5, rel=0.3)
    assert long.joules == pytest.approx(2.0, rel=0.3)
    assert 2.5 < long.joules / short.joules < 6
    with meter.measure() as idle:
        time.sleep(0.1)  # wall time without CPU time costs (almost) nothing in the estimate
    assert idle.joules < 0.05


def test_estimate_figure_from_env(monkeypatch):
    monkeypatch.setenv("EDGEINFER_WATTS_PER_CORE", "4.5")
    meter = EstimateMeter()
    assert meter.watts_per_core == 4.5 and "4.5 W per busy core" in meter.note
    with meter.measure() as m:
        burn(0.1)
    assert m.joules == pytest.approx(0.45, rel=0.3)
    monkeypatch.setenv("EDGEINFER_WATTS_PER_CORE", "nonsense")
    assert EstimateMeter().watts_per_core == 10.0


def test_selection_prefers_rapl(powercap):
    make_zone(powercap, "intel-rapl:0", "package-0", 0)
    assert open_meter("cpu").source == "rapl"
    assert open_meter("cpu", source="estimate").source == "estimate"


def test_selection_falls_back_to_labelled_estimate(powercap):
    meter = open_meter("cpu")
    assert meter.source == "estimate"
    assert "no RAPL or NVML counters readable here" in meter.note and "W per busy core assumed" in meter.note
    with pytest.raises(MeterUnavailable):
        open_meter("cpu", source="rapl")
    with pytest.raises(MeterUnavailable, match="Unknown energy source"):
        open_meter("cpu", source="watts")


@pytest.fixture
def no_nvml(monkeypatch):
    monkeypatch.setattr(nvml_mod, "LIBRARY_NAMES", ("libnvidia-ml-does-not-exist.so.1",))
    monkeypatch.setattr(nvml_mod, "_lib", None)


def test_nvml_absent_not_chosen(powercap, no_nvml):
    with pytest.raises(MeterUnavailable, match="NVML not found"):
        energy.NvmlMeter()
    gpu = open_meter("cuda:0")  # a GPU asked for, no NVML: the CPU side alone, and the note says so
    assert gpu.source == "estimate" and "NVML" in gpu.note
    make_zone(powercap, "intel-rapl:0", "package-0", 0)
    assert open_meter("gpu").source == "rapl"
    assert energy.available_sources()["nvml"].startswith("NVML not found")


class FakeMeter(energy.Meter):
    def __init__(self, source, joules):
        self.source, self.joules = source, joules

    def _start(self):
        return None

    def _stop(self, state):
        return self.joules


def test_nvml_never_used_for_cpu(powercap, monkeypatch):
    monkeypatch.setattr(energy, "NvmlMeter", lambda *a, **k: FakeMeter("nvml", 7.0))
    assert open_meter("cpu").source == "estimate"
    gpu = open_meter("cuda")
    assert isinstance(gpu, CombinedMeter) and gpu.source == "nvml+estimate"


def test_combined_adds_up():
    meter = CombinedMeter([FakeMeter("nvml", 7.0), FakeMeter("rapl", 3.0)])
    with meter.measure() as m:
        pass
    assert m.source == "nvml+rapl" and m.joules == 10.0 and m.parts == {"nvml": 7.0, "rapl": 3.0}
    assert m.tokens_per_joule(20) == 2.0


def test_figures_set_when_block_raises():
    meter = EstimateMeter()
    with pytest.raises(ZeroDivisionError):
        with meter.measure() as m:
            1 / 0
    assert m.joules is not None and m.seconds is not None
