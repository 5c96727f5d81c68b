"""The simulator's NIR arrays (imred.sim.nir) against their truth, read back by the pipeline.

A 128x128 IO:I-like camera (config/instruments/nir_demo.yaml): reads with reference-pixel
drifts, reset levels, non-linearity and noise. The pipeline's own steps (reference-pixel
correction, read combination) turn them back into rates, compared with the truth in
units of the noise from the standard formulas (numbers in the comments are what the
tests found).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from imred.calib import prepare_exposure
from imred.errors import ImredError
from imred.instrument import load_instrument
from imred.nir import correct_reference_pixels, trim_reference_pixels
from imred.obslog import read_obslog, update_obslog, usable
from imred.sim import optics
from imred.sim.nir import NirCamera, reference_pattern, sampling
from imred.sim.plan import Frame
from imred.simulate import load_scenario, simulate_night

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "config" / "scenarios" / "nir_small.yaml"
WIDTH, N_OUT = 4, 4
GAIN, RN = 2.12, 15.0  # e-/ADU, e- per read (nir_demo)
T_EXP = 10.0


def _camera(mode: str | None = None, **nir):
    """A NirCamera of the nir_demo chip with the nir_small scenario (``nir`` overrides)."""
    sc, _, _ = load_scenario(SCENARIO)
    for key, value in nir.items():
        if isinstance(value, dict):
            sc["nir"][key].update(value)
        else:
            sc["nir"][key] = value
    inst = load_instrument("nir_demo")
    layouts = optics.chip_layouts(inst, gain_enabled=True, distortion_arcsec_at_600=0.0)
    cam = NirCamera(sc, inst, layouts)
    if mode is not None:
        cam.mode = mode
    return sc, inst, layouts, cam


def _frame(index: int, mjd: float = 60385.0, exptime: float = T_EXP) -> Frame:
    return Frame(index=index, name=f"f{index:03d}", imagetype="science", exptime=exptime, mjd=mjd)


def _expose(cam, layouts, f: Frame, rate: np.ndarray, bias: float = 5000.0, poly=None):
    """One exposure of a given true rate (e-/s, data grid): the chip dict."""
    lay = layouts[0]
    expected = [(rate * f.exptime, [], None)]
    biases = {lay.name: np.full(lay.raw_shape, bias, dtype=np.float32)}
    return cam.expose(f, expected, biases, np.zeros(1), poly)[0]


def _textbook_sigma(samp, rate):
    """1-sigma error (e-/s) of a rate: CDS 2 rn^2 + S; Fowler-N 2 rn^2 / N + S (1 - (N^2 - 1)
    d / (3 N T)); ramp of n reads d apart 12 rn^2 / (n (n^2 - 1) d^2) + 6 (n^2 + 1) f /
    (5 n (n^2 - 1) d) (Rauscher et al. 2007)."""
    t = samp.times
    if samp.mode == "ramp":
        n, d = t.size, t[1] - t[0]
        var = 12 * RN**2 / (n * (n**2 - 1) * d**2) + 6 * (n**2 + 1) * rate / (
            5 * n * (n**2 - 1) * d
        )
        return np.sqrt(var)
    n = t.size // 2
    d = t[1] - t[0] if n > 1 else 0.0
    poisson = 1 - (n**2 - 1) * d / (3 * n * T_EXP)
    return np.sqrt(2 * RN**2 / n + rate * T_EXP * poisson) / T_EXP


def test_sampling_times_and_labels():
    cds = sampling("cds", 4, 1.4, 10.0)
    assert cds.times.tolist() == [1.4, 11.4] and cds.groups == ["pedestal", "signal"]
    fowler = sampling("fowler", 3, 1.4, 10.0)
    assert fowler.times == pytest.approx([1.4, 2.8, 4.2, 11.4, 12.8, 14.2])
    assert fowler.groups == ["pedestal"] * 3 + ["signal"] * 3 and fowler.index == [1, 2, 3] * 2
    ramp = sampling("ramp", 5, 1.4, 10.0)
    assert ramp.times == pytest.approx([1.4, 3.9, 6.4, 8.9, 11.4]) and ramp.index == [1, 2, 3, 4, 5]
    for samp in (cds, fowler, ramp):  # the sim's weights: unit response to a rate
        w = samp.weights()
        assert w.sum() == pytest.approx(0, abs=1e-12) and w @ samp.times == pytest.approx(1)
    with pytest.raises(ImredError, match=r"at least 4\.2 s"):
        sampling("fowler", 3, 1.4, 4.0)
    with pytest.raises(ImredError, match="no bias frames"):
        sampling("cds", 1, 1.4, 0.0)
    with pytest.raises(ImredError, match="overlap"):
        sampling("ramp", 10, 1.4, 10.0)


@pytest.mark.parametrize(("mode", "reads"), [("cds", 1), ("fowler", 2), ("ramp", 6)])
def test_simulated_reads_reproduce_the_input_rate_within_the_noise(mode, reads):
    _, inst, layouts, cam = _camera(mode, reads=reads)
    lay = layouts[0]
    rate = np.random.default_rng(41).uniform(5.0, 500.0, lay.data_shape)
    chip = _expose(cam, layouts, _frame(1), rate, poly=inst.detector["nonlinearity"]["polynomial"])
    samp = cam.sampling(_frame(1))
    raws = [chip[f"read{i}"] for i in range(samp.times.size)]
    assert all(r.dtype == np.uint16 and r.shape == (128, 128) for r in raws)
    p = prepare_exposure(
        raws,
        samp.times,
        inst.chip("h2rg"),
        (1, 1),
        saturation=40000.0,
        nonlinearity=inst.detector["nonlinearity"],
        reference={"mode": "ramp", "width": WIDTH, "outputs": N_OUT},
        combine=mode,
        exptime=T_EXP,
        n_pedestal=samp.groups.count("pedestal") or None,
    )
    measured = p.data * GAIN / T_EXP
    truth = rate[WIDTH:-WIDTH, WIDTH:-WIDTH]
    pull = (measured - truth) / _textbook_sigma(samp, truth)
    # found mean 0.045 / 0.018 / 0.005, std 0.995 / 1.009 / 0.997 (cds, fowler-2, ramp-6)
    # over 14400 pixels; a frame's mean also carries the reference correction's error,
    # common to the 1800 pixels of an output and parity (about 0.03 sigma)
    assert abs(pull.mean()) < 0.1 and pull.std() == pytest.approx(1.0, abs=0.04)
    # the truth the camera keeps is the input rate (0 in the reference border)
    kept = cam.rates["f001"][lay.name]
    assert kept[WIDTH:-WIDTH, WIDTH:-WIDTH] == pytest.approx(truth, rel=1e-6)
    assert not kept[:WIDTH].any() and not kept[:, -WIDTH:].any()


def test_reference_correction_removes_the_injected_pattern_to_within_read_noise():
    *_, layouts, cam = _camera("cds")
    lay = layouts[0]
    chip = _expose(cam, layouts, _frame(1), np.zeros(lay.data_shape))
    r0, r1 = (chip[f"read{i}"].astype(float) for i in range(2))
    rows = Table(rows=cam.reference_rows)
    pattern = []
    for read in (1, 2):  # the truth table rebuilds the pattern of each read
        sel = rows[rows["read"] == read]
        offsets = np.asarray(sel["offset_adu"]).reshape(N_OUT, 2)
        slopes = np.asarray(sel["slope_adu"]).reshape(N_OUT, 2)
        pattern.append(reference_pattern(lay.raw_shape, N_OUT, offsets, slopes))
    injected = trim_reference_pixels(pattern[1] - pattern[0], WIDTH)
    diff = trim_reference_pixels(r1 - r0, WIDTH)  # reset levels cancel, the drift does not
    corrected = trim_reference_pixels(
        correct_reference_pixels(r1, "ramp", width=WIDTH, n_outputs=N_OUT)
        - correct_reference_pixels(r0, "ramp", width=WIDTH, n_outputs=N_OUT),
        WIDTH,
    )
    rn_adu = RN / GAIN
    noise = diff - injected  # read noise of the two reads only
    assert noise.std() == pytest.approx(np.sqrt(2) * rn_adu, rel=0.03)  # found 10.06 (10.01)
    # the pattern (found rms 32.0 ADU) is 3x the noise; what the correction leaves of it
    # is the noise of the 64 reference pixels per output, parity and edge: found rms
    # 0.64 ADU (at most 10.0 / 8 = 1.25 at the edges)
    assert injected.std() > 3 * noise.std()
    residual = corrected - noise
    assert np.sqrt(np.mean(residual**2)) < 0.2 * np.sqrt(2) * rn_adu
    assert corrected.std() == pytest.approx(noise.std(), rel=0.03)


def test_persistence_truth_follows_saturation_and_the_pipeline_sees_it():
    _, inst, layouts, cam = _camera(persistence={"enabled": True, "rate_e_per_s": 30.0})
    lay = layouts[0]
    bright = np.full(lay.data_shape, 20.0)
    bright[60:64, 60:64] = 20000.0  # saturates (40000 raw ADU) within the exposure
    first = _frame(1)
    _expose(cam, layouts, first, bright)
    second = _frame(2, mjd=first.mjd + 60.0 / 86400.0)  # reset a minute later
    chip = _expose(cam, layouts, second, np.full(lay.data_shape, 20.0))
    assert "f001" not in cam.persisted or not cam.persisted["f001"][lay.name].any()
    ghost = cam.persisted["f002"][lay.name]
    # 30 e-/s decaying over 120 s from the end of the first exposure (its last read 12.8 s
    # after its reset), as Fowler-2 measures it: (mean Q(signal) - mean Q(pedestal)) / T
    # with Q(t) = 30 x 120 e^(-lag / 120) (1 - e^(-t / 120)): 19.087 e-/s
    lag = 60.0 - 12.8
    charge = 30.0 * 120.0 * np.exp(-lag / 120.0) * (1 - np.exp(-cam.sampling(first).times / 120))
    assert ghost[61, 61] == pytest.approx((charge[2:].mean() - charge[:2].mean()) / T_EXP)
    assert np.count_nonzero(ghost > 1.0) == 16 and ghost[10, 10] == 0.0
    samp = cam.sampling(second)
    p = prepare_exposure(
        [chip[f"read{i}"] for i in range(4)], samp.times, inst.chip("h2rg"), (1, 1),
        saturation=40000.0, nonlinearity=None,
        reference={"mode": "ramp", "width": WIDTH, "outputs": N_OUT},
        combine="fowler", exptime=T_EXP, n_pedestal=2,
    )  # fmt: skip
    measured = p.data[56:60, 56:60] * GAIN / T_EXP  # the ghost in the pipeline's rate
    assert measured.mean() == pytest.approx(20.0 + ghost[61, 61], abs=3.0)  # found 39.4
    # off, nothing persists
    _, _, layouts_off, off = _camera(persistence={"enabled": False})
    _expose(off, layouts_off, _frame(1), bright)
    _expose(off, layouts_off, _frame(2, mjd=first.mjd + 60.0 / 86400.0), bright * 0 + 20.0)
    assert off.persisted == {}


def test_instrument_software_image_for_cameras_without_reads():
    """RATIR-like nir-ramp chips: one finished image per exposure, rate x exptime (ADU)."""
    # the instrument software does not remove the reads' reference drifts: off here
    *_, layouts, cam = _camera("ramp", reads=6, reference={"enabled": False})
    cam.reads_spec = None
    lay = layouts[0]
    rate = np.random.default_rng(43).uniform(5.0, 500.0, lay.data_shape)
    rate[50, 50] = 1e6  # saturated before the second read
    chip = _expose(cam, layouts, _frame(1), rate)
    image = chip["raw"]
    assert image.dtype == np.float32 and "read0" not in chip
    assert cam.files(_frame(1), ["x.fits"]) == [(_frame(1), ["x.fits"], [], "raw")]
    inner = np.s_[WIDTH:-WIDTH, WIDTH:-WIDTH]
    measured = image[inner] * GAIN / T_EXP
    ok = rate[inner] < 1e5
    pull = (measured - rate[inner])[ok] / _textbook_sigma(cam.sampling(_frame(1)), rate[inner][ok])
    # found median -0.015, std 0.993
    assert abs(np.median(pull)) < 0.05 and pull.std() == pytest.approx(1.0, abs=0.04)
    assert image[50, 50] == pytest.approx(min(lay.saturation, 65535.0))


@pytest.fixture(scope="module")
def science_night(tmp_path_factory):
    """nir_small with two science exposures only (8 read files)."""
    doc, _, _ = load_scenario(SCENARIO)
    doc["calibrations"] = {"bias": {"count": 0}, "dark": {"count": 0}, "flat": {"count": 0}}
    doc["observing"]["science_frames_per_band"] = 2
    doc["nir"]["persistence"]["enabled"] = True
    out = tmp_path_factory.mktemp("nir_night")
    doc.pop("small", None)
    return out, simulate_night(doc, out)


def test_the_night_is_written_one_file_per_read_and_logged_one_frame_per_exposure(
    science_night, tmp_path
):
    out, summary = science_night
    assert summary["n_files"] == 8 and summary["instrument"] == "nir_demo"
    truth = out / "truth"
    reads = Table.read(truth / "nir_reads.ecsv")
    assert reads.meta["sampling"] == "fowler" and len(reads) == 8
    first = fits.getheader(out / "raw" / reads["file"][2])  # the first signal read
    assert (first["SEQNUM_M"], first["SEQNUM_N"], first["INTTIME"]) == (2, 1, 11.4)
    assert first["SEQNUM_R"] == 1 and first["EXPTIME"] == 10.0 and first["OBSTYPE"] == "EXPOSE"
    assert (truth / "rate").is_dir() and (truth / "nir_reference.ecsv").is_file()
    inst = load_instrument("nir_demo")
    log = tmp_path / "obslog.tsv"
    rows, stats = update_obslog(inst, [out / "raw"], log)
    assert stats["read"] == 8 and all(r["use"] == "yes" for r in rows)
    frames = usable(rows)
    truth_frames = Table.read(truth / "frames.ecsv")
    assert [r["frame"] for r in frames] == list(truth_frames["frame"])  # one per exposure
    assert frames[0]["read_times"] == [1.4, 2.8, 11.4, 12.8]
    assert frames[0]["read_groups"] == ["pedestal", "pedestal", "signal", "signal"]
    assert frames[0]["exptime"] == 10.0 and len(frames[0]["read_paths"]) == 4
    disk, _ = read_obslog(log)
    assert usable(disk) == frames
    # a read gone: the exposure is incomplete (its other reads are not used), the other
    # exposure is still one frame
    Path(frames[1]["read_paths"][3]).unlink()
    rows, stats = update_obslog(inst, [out / "raw"], log)
    assert stats["removed"] == 1
    left = [r for r in rows if r["exposure"] == frames[1]["exposure"]]
    assert len(left) == 3 and all(r["use"] == "no" for r in left)
    assert left[0]["reason"].startswith("incomplete exposure: Fowler sampling needs as many")
    assert [r["frame"] for r in usable(rows)] == [frames[0]["frame"]]


def test_persistence_truth_is_written_when_on(science_night):
    out, _ = science_night
    truth = out / "truth"
    frames = Table.read(truth / "frames.ecsv")["frame"]
    assert sorted(p.stem for p in (truth / "persistence").glob("*.fits")) == sorted(frames)
    ghosts = [fits.getdata(truth / "persistence" / f"{f}.fits", "h2rg") for f in frames]
    assert not ghosts[0].any()  # the first exposure of the night has nothing before it
    # nir_small's bright stars saturate in the first exposure: found 4 pixels, 16.9 e-/s
    assert np.count_nonzero(ghosts[1] > 1.0) > 0 and ghosts[1].max() > 5.0
