"""Background, detection and measurement on seeded synthetic frames with known answers.

Most frames are built here: Moffat stars (pixel-integrated, the simulator's renderer)
at known positions and fluxes on a known sky, Poisson noise plus read noise, VAR equal
to the expected variance. The frame-QA test also runs on the small simulated night,
calibrated with its truth (a few seconds). Only the SExtractor tests need the
``source-extractor`` binary.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import sep
from astropy.io import fits
from astropy.table import Table
from imred.detect import (
    Background,
    Flag,
    SExtractorOptions,
    detect_sources,
    estimate_background,
    frame_qa,
)
from imred.errors import ImredError
from imred.mask import Bit
from imred.sim.optics import render_stars
from imred.simulate import simulate_night
from scipy.spatial import cKDTree

RN = 5.0  # read noise, e-
SEXTRACTOR = shutil.which("source-extractor")
needs_sextractor = pytest.mark.skipif(
    SEXTRACTOR is None,
    reason="SExtractor binary 'source-extractor' not on PATH (Debian: apt install source-extractor)",
)


def place(rng, n, shape, margin, min_sep):
    """n positions at least min_sep apart, margin pixels inside the frame."""
    ny, nx = shape
    pts: list[tuple[float, float]] = []
    while len(pts) < n:
        x, y = rng.uniform(margin, nx - 1 - margin), rng.uniform(margin, ny - 1 - margin)
        if all((x - a) ** 2 + (y - b) ** 2 >= min_sep**2 for a, b in pts):
            pts.append((x, y))
    return np.array(pts).T


def synthetic_frame(
    seed,
    shape=(384, 384),
    n=120,
    fwhm=3.2,
    beta=3.0,
    sky=400.0,
    gradient=0.0,
    flux_range=(300.0, 3e5),
    min_sep=16.0,
    margin=14,
):
    """A frame in electrons: Moffat stars on a (tilted) sky, Poisson + read noise."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky_map = sky * (1.0 + gradient * (0.7 * xx / nx + 0.3 * yy / ny))
    x, y = place(rng, n, shape, margin, min_sep) if n else (np.zeros(0), np.zeros(0))
    flux = np.exp(rng.uniform(*np.log(flux_range), n))
    model = np.zeros(shape)
    render_stars(model, x, y, flux, fwhm, beta)
    expected = sky_map + model
    sci = rng.poisson(expected).astype(np.float64) + rng.normal(0.0, RN, shape)
    return {
        "sci": sci,
        "var": expected + RN**2,
        "mask": np.zeros(shape, np.uint16),
        "sky": sky_map,
        "model": model,
        "x": x,
        "y": y,
        "flux": flux,
        "fwhm": fwhm,
    }


def match(table, x, y, radius=1.5):
    """Index of the nearest detection of each true star, -1 where none within radius."""
    if len(table) == 0:
        return np.full(x.size, -1)
    d, i = cKDTree(np.column_stack([table["x"], table["y"]])).query(np.column_stack([x, y]))
    return np.where(d <= radius, i, -1)


def true_snr(frame, radius=5.0):
    """Expected S/N of each star in a circular aperture of the given radius."""
    f, _, _ = sep.sum_circle(frame["model"], frame["x"], frame["y"], radius)
    npix = np.pi * radius**2
    sky = frame["sky"][np.rint(frame["y"]).astype(int), np.rint(frame["x"]).astype(int)]
    return f / np.sqrt(f + npix * (sky + RN**2))


@pytest.fixture(scope="module")
def field():
    frame = synthetic_frame(seed=11, gradient=0.05)
    frame["background"] = estimate_background(frame["sci"], frame["mask"])
    return frame


@pytest.fixture(scope="module")
def sep_table(field):
    return detect_sources(
        field["sci"], field["var"], field["mask"], field["background"], pixel_scale_arcsec=0.4
    )


# ----------------------------------------------------------------- background
def test_background_recovers_gradient_despite_masked_pixels_and_stars():
    frame = synthetic_frame(
        seed=3, shape=(512, 512), n=700, sky=500.0, gradient=0.2, flux_range=(300, 3e4), min_sep=0
    )
    sci, mask = frame["sci"].copy(), frame["mask"].copy()
    rng = np.random.default_rng(4)
    hot = rng.random(sci.shape) < 0.02
    sci[hot] = 6e4  # would pull any unmasked estimate up
    mask[hot] = Bit.HOT
    sci[200:210, :] = np.nan
    mask[200:210, :] = Bit.NO_DATA
    inner = (slice(64, -64), slice(64, -64))
    sky = frame["sky"][inner]

    masked = estimate_background(sci, mask)
    bare = estimate_background(sci, mask, mask_objects=False)
    err_masked = (masked.level[inner] - sky) / sky
    err_bare = (bare.level[inner] - sky) / sky
    assert np.abs(err_masked).max() < 0.01
    assert abs(np.median(err_masked)) < 0.0015
    # the stars' wings lift the estimate without object masking
    assert np.median(err_bare) > 2 * abs(np.median(err_masked))
    assert masked.object_mask.mean() > 0.1 and not bare.object_mask.any()
    assert not masked.object_mask[mask != 0].any()
    # noise: Poisson on the sky plus read noise
    expected_rms = np.sqrt(np.median(frame["sky"]) + RN**2)
    assert masked.global_rms == pytest.approx(expected_rms, rel=0.05)
    assert masked.global_level == pytest.approx(np.median(frame["sky"]), rel=0.01)


def test_background_of_pure_sky_is_within_noise_up_to_the_edges():
    frame = synthetic_frame(seed=5, shape=(512, 512), n=0, sky=500.0, gradient=0.2)
    bkg = estimate_background(frame["sci"])
    box = 64
    noise_per_mesh = np.sqrt(500.0 + RN**2) / box  # noise / sqrt(box area)
    err = bkg.level - frame["sky"]
    assert np.abs(err[box:-box, box:-box]).max() < 4 * noise_per_mesh
    assert np.abs(err).max() < 8 * noise_per_mesh  # the gradient is followed to the edges
    # a noiseless ramp is reproduced exactly
    ramp = estimate_background(frame["sky"] + 1e-3 * np.random.default_rng(0).random((512, 512)))
    assert np.abs(ramp.level - frame["sky"]).max() < 0.05


def test_all_masked_frame_is_an_error():
    sci = np.full((64, 64), 100.0)
    with pytest.raises(ImredError, match="masked"):
        estimate_background(sci, np.full(sci.shape, Bit.BAD, np.uint16))
    bkg = estimate_background(sci + np.random.default_rng(1).normal(0, 1, sci.shape))
    with pytest.raises(ImredError, match="masked"):
        detect_sources(sci, np.ones(sci.shape), np.full(sci.shape, Bit.NO_DATA, np.uint16), bkg)


# ----------------------------------------------------------------- detection (sep)
def test_detection_completeness_and_no_false_sources(field, sep_table):
    idx = match(sep_table, field["x"], field["y"])
    snr = true_snr(field)
    assert (snr > 10).sum() > 60
    assert (idx[snr > 10] >= 0).all()  # complete above S/N 10
    # every detection is a star (the stars are >= 16 px apart: no blends)
    unmatched = np.setdiff1d(np.arange(len(sep_table)), idx[idx >= 0])
    assert unmatched.size <= 1


def test_positions_fluxes_and_fwhm(field, sep_table):
    t = sep_table
    idx = match(t, field["x"], field["y"])
    snr = true_snr(field)
    found = idx >= 0
    clean = found.copy()
    clean[found] = t["flags"][idx[found]] == 0
    # positions: windowed centroids of bright stars
    bright = clean & (snr > 100)
    assert bright.sum() > 20
    dx = t["x"][idx[bright]] - field["x"][bright]
    dy = t["y"][idx[bright]] - field["y"][bright]
    assert np.sqrt(np.mean(dx**2 + dy**2) / 2) < 0.05
    assert abs(np.mean(dx)) < 0.01 and abs(np.mean(dy)) < 0.01
    # aperture fluxes: pulls against the noiseless model in the same apertures
    radii = [t.meta[f"APERRAD{i}"] for i in range(t.meta["NAPER"])]
    for i in (1, 2):
        use = clean & (snr > 10)
        j = idx[use]
        expected, _, _ = sep.sum_circle(field["model"], t["x"][j], t["y"][j], radii[i])
        pull = (t[f"flux_aper_{i}"][j] - expected) / t[f"fluxerr_aper_{i}"][j]
        assert abs(np.mean(pull)) < 0.25, (i, np.mean(pull))
        assert 0.8 < np.std(pull) < 1.2, (i, np.std(pull))
    # Kron flux: most of the light
    j = idx[bright]
    assert np.median(t["flux"][j] / field["flux"][bright]) == pytest.approx(0.98, abs=0.02)
    # FWHM of the Moffat profile, before pixel sampling
    fwhm = np.asarray(t["fwhm_px"][j])
    assert np.median(fwhm) == pytest.approx(field["fwhm"], rel=0.02)
    assert np.all(np.abs(fwhm / field["fwhm"] - 1) < 0.05)
    assert np.median(t["ellipticity"][j]) < 0.05
    assert np.all(t["fwhm_arcsec"] == t["fwhm_px"] * 0.4)
    assert np.all(t["snr"] == t["flux"] / t["flux_err"])


def test_table_columns_units_and_meta(sep_table, tmp_path):
    t = sep_table
    t.write(tmp_path / "catalog.fits")  # no warning (they are errors here): FITS-ready
    assert fits.getheader(tmp_path / "catalog.fits", 1)["APERRAD3"] == 12.0
    for name in ("x", "y", "flux", "flux_err", "fwhm_px", "a", "b", "theta", "ellipticity",
                 "snr", "peak", "flags", "flux_aper_0", "fluxerr_aper_3", "saturated"):  # fmt: skip
        assert name in t.colnames
    assert t["x"].unit == "pix" and t["theta"].unit == "deg"
    assert t.meta["DETMETH"] == "sep" and t.meta["NAPER"] == 4
    assert [t.meta[f"APERRAD{i}"] for i in range(4)] == [3.0, 5.0, 8.0, 12.0]
    assert np.all((t["theta"] > -90) & (t["theta"] <= 90))
    assert np.all(t["b"] <= t["a"])


def test_pure_noise_gives_an_empty_table_and_a_flagged_qa():
    frame = synthetic_frame(seed=8, shape=(512, 512), n=0, sky=300.0, gradient=0.1)
    bkg = estimate_background(frame["sci"])
    empty = detect_sources(frame["sci"], frame["var"], frame["mask"], bkg, threshold=5.0)
    assert len(empty) == 0
    assert "flux_aper_3" in empty.colnames and empty["flags"].dtype == np.int32
    qa = frame_qa(empty, bkg, 0.4)
    assert qa["n_sources"] == 0 and "no sources" in qa["flags"]
    assert np.isnan(qa["fwhm_arcsec"])
    assert qa["sky_level"] == pytest.approx(300.0 * 1.05, rel=0.01)
    # the default threshold (1.5 sigma over 5 pixels, filtered) finds next to nothing either
    default = detect_sources(frame["sci"], frame["var"], frame["mask"], bkg)
    assert len(default) <= 3


def test_masked_cosmic_ray_makes_no_source_and_flags_its_neighbour():
    frame = synthetic_frame(seed=9, shape=(128, 128), n=0, sky=300.0)
    sci, mask = frame["sci"].copy(), frame["mask"].copy()
    render_stars(sci, np.array([80.3]), np.array([60.6]), np.array([2e4]), 3.0, 3.0)
    sci[30:32, 20:23] += 8000.0  # a cosmic ray, far from the star
    sci[62, 83] += 5000.0  # another one, in the star's apertures
    mask[30:32, 20:23] = Bit.COSMIC_RAY
    mask[62, 83] = Bit.COSMIC_RAY
    bkg = estimate_background(sci, mask)
    t = detect_sources(sci, frame["var"], mask, bkg)
    assert len(t) == 1
    assert (t["x"][0], t["y"][0]) == pytest.approx((80.3, 60.6), abs=0.1)
    assert t["flags"][0] & Flag.MASKED
    assert t["mask_bits"][0] == Bit.COSMIC_RAY
    assert not t["saturated"][0]
    # the same hit, unmasked, is a source
    unmasked = mask.copy()
    unmasked[30:32, 20:23] = 0
    assert len(detect_sources(sci, frame["var"], unmasked, bkg)) == 2


def test_saturated_star_is_one_flagged_source():
    frame = synthetic_frame(seed=10, shape=(160, 160), n=0, sky=300.0)
    sci, mask, var = frame["sci"].copy(), frame["mask"].copy(), frame["var"].copy()
    star = np.zeros(sci.shape)
    render_stars(
        star, np.array([70.4, 120.2]), np.array([80.7, 40.1]), np.array([4e6, 2e4]), 3.0, 3.0
    )
    sci += star
    var += star
    saturated = sci > 6e4
    assert saturated.sum() > 5
    sci[saturated] = 6e4
    mask[saturated] = Bit.SATURATED
    bkg = estimate_background(sci, mask)
    t = detect_sources(sci, var, mask, bkg)
    assert len(t) == 2
    t.sort("x")
    assert list(t["saturated"]) == [True, False]
    assert t["flags"][0] & Flag.SATURATED and not t["flags"][1] & Flag.SATURATED
    assert t["mask_bits"][0] & Bit.SATURATED
    # the centroid keeps the clipped core: it is symmetric about the centre
    assert (t["x"][0], t["y"][0]) == pytest.approx((70.4, 80.7), abs=0.05)


def test_bad_arguments_are_errors(field):
    args = (field["sci"], field["var"], field["mask"], field["background"])
    with pytest.raises(ImredError, match="method"):
        detect_sources(*args, method="daofind")
    with pytest.raises(ImredError, match="aperture"):
        detect_sources(*args, aperture_radii_px=(0.0,))
    with pytest.raises(ImredError, match="shape"):
        detect_sources(field["sci"][:10], None, None, field["background"])
    with pytest.raises(ImredError, match="unknown SExtractor option"):
        SExtractorOptions.from_value({"binnary": "sex"})
    with pytest.raises(ImredError, match="not found"):
        detect_sources(*args, method="sextractor", sextractor={"binary": "no-such-sextractor"})


# ----------------------------------------------------------------- frame QA
def test_frame_qa_measures_the_seeing_of_stars_not_galaxies_or_cosmic_rays():
    pixel_scale, seeing = 0.4, 1.05  # arcsec
    frame = synthetic_frame(
        seed=12, shape=(384, 384), n=80, fwhm=seeing / pixel_scale, beta=2.5, sky=800.0,
        flux_range=(2e3, 2e5), min_sep=20,
    )  # fmt: skip
    rng = np.random.default_rng(13)
    sci = frame["sci"].copy()
    # extended sources (broad profiles) and unmasked cosmic rays (sharp): not PSF stars
    gx, gy = place(rng, 15, sci.shape, 20, 1)
    galaxies = np.zeros(sci.shape)
    render_stars(galaxies, gx, gy, rng.uniform(2e4, 1e5, 15), 7.0, 1.5)
    sci += rng.poisson(galaxies)
    cx, cy = rng.integers(10, 374, 20), rng.integers(10, 374, 20)
    sci[cy, cx] += 4000.0
    bkg = estimate_background(sci)
    t = detect_sources(sci, frame["var"] + galaxies, None, bkg)
    qa = frame_qa(t, bkg, pixel_scale)
    assert qa["fwhm_arcsec"] == pytest.approx(seeing, rel=0.05)
    assert qa["n_psf_stars"] >= 30
    assert qa["ellipticity"] < 0.05
    assert qa["sky_noise"] == pytest.approx(np.sqrt(800.0 + RN**2), rel=0.05)
    assert qa["flags"] == []
    few = frame_qa(t[:3], bkg, pixel_scale)
    assert any(f.startswith("few sources") for f in few["flags"])


@pytest.fixture(scope="module")
def simulated_frames(tmp_path_factory):
    """Science chips of the small demo night, calibrated with the simulator's truth.

    The truth (bias, gain, non-linearity, dark, flat, bad pixels, cosmic rays) stands in
    for the masters, so the frames are what a perfect calibration would give: SCI (e-),
    VAR, MASK, and the frame's true seeing and star positions.
    """
    out = simulate_night("demo", tmp_path_factory.mktemp("night"), small=True)
    raw, truth = Path(out["raw"]), Path(out["truth"])
    frames = Table.read(truth / "frames.ecsv")
    chips = Table.read(truth / "frame_chips.ecsv")
    stars = Table.read(truth / "star_frames.ecsv")
    nl = Table.read(truth / "nonlinearity.ecsv")
    coef = np.zeros(int(max(nl["power"])) + 1)
    coef[np.asarray(nl["power"], int)] = nl["coefficient"]
    result = []
    for frame in frames[frames["imagetype"] == "science"]:
        for chip_row in chips[chips["frame"] == frame["frame"]]:
            chip, name = chip_row["chip"], chip_row["chip"].upper()
            with fits.open(raw / frame["file"]) as hdul:
                adu = hdul[f"CCD{chip[1:]}"].data.astype(np.float64)
            saturated = adu >= 60000  # demo_small saturation (ADU), bias included
            adu -= fits.getdata(truth / "bias.fits", name) + chip_row["bias_offset"]
            if nl.meta.get("enabled", True):
                adu *= np.polynomial.polynomial.polyval(adu, coef)
            shape = fits.getdata(truth / "dark.fits", name).shape
            data = adu[: shape[0], : shape[1]] * chip_row["gain"]
            flat = fits.getdata(truth / f"flat_{frame['band']}.fits", name).astype(np.float64)
            dark = fits.getdata(truth / "dark.fits", name) * frame["exptime"]
            sci = (data - dark) / flat
            var = (np.maximum(data, 0.0) + chip_row["read_noise"] ** 2) / flat**2
            mask = np.zeros(shape, np.uint16)
            badpix = fits.getdata(truth / "badpix.fits", name)
            mask[(badpix & 1) != 0] |= np.uint16(Bit.HOT)
            mask[(badpix & 6) != 0] |= np.uint16(Bit.BAD)
            mask[fits.getdata(truth / "frames" / f"{frame['frame']}.fits", name) != 0] |= np.uint16(
                Bit.COSMIC_RAY
            )
            mask[saturated[: shape[0], : shape[1]]] |= np.uint16(Bit.SATURATED)
            on = stars[(stars["frame"] == frame["frame"]) & (stars["chip"] == chip)]
            result.append((frame["seeing"], sci, var, mask, on[on["on_chip"]]))
    return result


def test_frame_qa_on_the_simulated_night_recovers_the_seeing(simulated_frames):
    ratios, offsets = [], []
    for seeing, sci, var, mask, stars in simulated_frames:
        bkg = estimate_background(sci, mask)
        t = detect_sources(sci, var, mask, bkg)
        qa = frame_qa(t, bkg, 0.4)  # demo camera: 0.4 arcsec/pixel
        assert qa["n_psf_stars"] >= 3
        ratios.append(qa["fwhm_arcsec"] / seeing)
        idx = match(t, np.asarray(stars["x"]), np.asarray(stars["y"]), radius=1.0)
        ok = idx >= 0
        ok[ok] = (t["flags"][idx[ok]] == 0) & (t["snr"][idx[ok]] > 100)
        offsets += [t["x"][idx[ok]] - stars["x"][ok], t["y"][idx[ok]] - stars["y"][ok]]
    ratios = np.array(ratios)
    assert len(ratios) == 12
    assert np.all(np.abs(ratios - 1) < 0.10), ratios
    assert abs(np.median(ratios) - 1) < 0.03, ratios
    offsets = np.concatenate(offsets)
    assert offsets.size > 50
    assert np.sqrt(np.mean(offsets**2)) < 0.05


# ----------------------------------------------------------------- SExtractor
@needs_sextractor
def test_sextractor_agrees_with_sep_and_writes_ldac(field, sep_table, tmp_path):
    header = fits.Header()
    header.update(
        {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRVAL1": 165.0, "CRVAL2": 32.0,
         "CRPIX1": 192.0, "CRPIX2": 192.0, "CD1_1": -0.4 / 3600, "CD1_2": 0.0,
         "CD2_1": 0.0, "CD2_2": 0.4 / 3600, "EXPTIME": 90.0}
    )  # fmt: skip
    ldac = tmp_path / "frame.ldac"
    sex = detect_sources(
        field["sci"], field["var"], field["mask"], field["background"], method="sextractor",
        sextractor={"ldac_path": ldac, "header": header}, pixel_scale_arcsec=0.4,
    )  # fmt: skip
    assert sex.colnames == sep_table.colnames
    assert sex.meta["DETMETH"] == "sextractor" and sex.meta["LDACPATH"] == str(ldac)
    idx_sep, idx_sex = match(sep_table, field["x"], field["y"]), match(sex, field["x"], field["y"])
    snr = true_snr(field)
    both = (idx_sep >= 0) & (idx_sex >= 0)
    assert both[snr > 10].all()
    bright = both & (snr > 100)
    a, b = sep_table[idx_sep[bright]], sex[idx_sex[bright]]
    assert np.sqrt(np.mean((a["x"] - b["x"]) ** 2 + (a["y"] - b["y"]) ** 2) / 2) < 0.05
    for col in ("flux_aper_1", "flux_aper_2", "flux_aper_3", "flux"):
        ratio = b[col] / a[col]
        assert np.median(ratio) == pytest.approx(1.0, abs=0.02), col
        assert np.percentile(np.abs(ratio - 1), 90) < 0.02, col
    assert np.median(b["fwhm_px"] / a["fwhm_px"]) == pytest.approx(1.0, abs=0.01)

    with fits.open(ldac) as hdul:
        assert [h.name for h in hdul[1:]] == ["LDAC_IMHEAD", "LDAC_OBJECTS"]
        objects = hdul["LDAC_OBJECTS"].data
        for col in ("XWIN_IMAGE", "YWIN_IMAGE", "ERRAWIN_IMAGE", "ERRBWIN_IMAGE",
                    "ERRTHETAWIN_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "FLAGS",
                    "FLAGS_WEIGHT", "IMAFLAGS_ISO", "SNR_WIN", "FWHM_IMAGE",
                    "ELONGATION", "X_WORLD", "Y_WORLD"):  # fmt: skip
            assert col in objects.columns.names, col
        assert len(objects) == len(sex)
        imhead = "".join(hdul["LDAC_IMHEAD"].data[0][0])
        assert "RA---TAN" in imhead and "EXPTIME" in imhead
    # the table's x is SExtractor's XWIN_IMAGE, moved to 0-based
    assert np.allclose(np.sort(objects["XWIN_IMAGE"] - 1.0), np.sort(sex["x"]))


@needs_sextractor
def test_sextractor_flags_the_same_masked_and_saturated_pixels():
    frame = synthetic_frame(seed=14, shape=(160, 160), n=0, sky=300.0)
    sci, mask, var = frame["sci"].copy(), frame["mask"].copy(), frame["var"].copy()
    star = np.zeros(sci.shape)
    render_stars(
        star, np.array([50.4, 110.2]), np.array([60.7, 100.1]), np.array([4e6, 2e4]), 3.0, 3.0
    )
    sci += star
    var += star
    saturated = sci > 6e4
    sci[saturated] = 6e4
    mask[saturated] = Bit.SATURATED
    sci[30:32, 120:123] += 8000.0
    mask[30:32, 120:123] = Bit.COSMIC_RAY
    sci[101, 112] += 3000.0
    mask[101, 112] = Bit.COSMIC_RAY
    bkg = estimate_background(sci, mask)
    tables = [detect_sources(sci, var, mask, bkg, method=m) for m in ("sep", "sextractor")]
    for t in tables:
        assert len(t) == 2
        t.sort("x")
        assert list(t["saturated"]) == [True, False]
        assert list(t["mask_bits"]) == [Bit.SATURATED, Bit.COSMIC_RAY]
    assert list(tables[0]["flags"]) == list(tables[1]["flags"])


def test_background_dataclass_fields(field):
    bkg = field["background"]
    assert isinstance(bkg, Background)
    assert bkg.level.shape == bkg.rms.shape == bkg.object_mask.shape == field["sci"].shape
    assert bkg.object_mask.dtype == bool
