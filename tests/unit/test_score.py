"""The scorer, on hand-made products with known errors against a small simulated night.

One ``--small`` demo night (2 chips of 256x256) is simulated per module; every test
writes its own products (results/{instrument}/{night}/...) into a fresh folder and checks
that :func:`imred.score.score` reports the error that was put in.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from imred import paths
from imred.mask import Bit
from imred.products import write_image_product
from imred.score import NOT_PRODUCED, SECTIONS, format_markdown, main, match_sky, score
from imred.simulate import simulate_night

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"
INSTRUMENT, NIGHT, SETUP = "demo_small", "20240315", "1x1_normal"
PIXEL_SCALE = 0.4


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("score_night")
    simulate_night(DEMO, out, small=True)
    return out / "truth"


@pytest.fixture(scope="module")
def tables(truth) -> dict:
    return {
        name: Table.read(truth / f"{name}.ecsv")
        for name in ("frames", "frame_chips", "stars", "star_frames")
    }


# ----------------------------------------------------------------- helpers
def product_path(workdir: Path, template: str, **fields) -> Path:
    names = {n for _, n, _, _ in string.Formatter().parse(template) if n}
    fields = {"instrument": INSTRUMENT, "night": NIGHT, **fields}
    if "setup" in names:
        fields.setdefault("setup", SETUP)
    path = workdir / template.format(**fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def primary(kind: str, chip: str, **cards) -> fits.Header:
    h = fits.Header()
    h["IMRTYPE"] = kind
    h["INSTRUME"] = INSTRUMENT
    h["CHIP"] = chip
    h["NIGHT"] = NIGHT
    h["TRIMSEC"] = "[1:256,1:256]"
    for key, value in cards.items():
        h[key] = value
    return h


def truth_image(truth: Path, name: str, chip: str) -> np.ndarray:
    with fits.open(truth / f"{name}.fits") as hdul:
        return np.asarray(hdul[chip.upper()].data, dtype=float)


def truth_frame(truth: Path, frame: str, chip: str) -> tuple[np.ndarray, fits.Header]:
    with fits.open(truth / "frames" / f"{frame}.fits") as hdul:
        return np.asarray(hdul[chip.upper()].data) > 0, hdul[chip.upper()].header.copy()


def science(tables) -> list[str]:
    f = tables["frames"]
    return [str(x) for x in f["frame"][f["imagetype"] == "science"]]


def frame_row(tables, frame):
    f = tables["frames"]
    return f[np.flatnonzero(f["frame"] == frame)[0]]


def on_chip(tables, frame, chip, *, only_on=True) -> Table:
    sf = tables["star_frames"]
    sel = (sf["frame"] == frame) & (sf["chip"] == chip)
    if only_on:
        sel &= sf["on_chip"]
    rows = sf[sel]
    stars = tables["stars"]
    index = {int(i): n for n, i in enumerate(stars["id"])}
    idx = [index[int(i)] for i in rows["id"]]
    for col in ("ra", "dec", "g_mag", "r_mag"):
        rows[col] = np.asarray(stars[col])[idx]
    return rows


def wcs_header(header: fits.Header) -> fits.Header:
    return WCS(header).to_header(relax=True)


def render_moffat(shape, x, y, flux, fwhm, beta=3.0, sky=0.0) -> np.ndarray:
    """Moffat stars (3x3 sub-pixel sampling, normalised over a 25-px stamp) on a flat sky."""
    image = np.full(shape, sky, dtype=float)
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    sub = (np.arange(3) + 0.5) / 3 - 0.5
    h = 25
    for xs, ys, f in zip(x, y, flux, strict=True):
        ix, iy = round(float(xs)), round(float(ys))
        gx = (np.arange(ix - h, ix + h + 1)[:, None] + sub[None, :] - xs).ravel()
        gy = (np.arange(iy - h, iy + h + 1)[:, None] + sub[None, :] - ys).ravel()
        prof = (1 + (gy[:, None] ** 2 + gx[None, :] ** 2) / alpha**2) ** (-beta)
        stamp = prof.reshape(2 * h + 1, 3, 2 * h + 1, 3).sum(axis=(1, 3))
        stamp *= f / stamp.sum()
        y1, y2, x1, x2 = iy - h, iy + h + 1, ix - h, ix + h + 1
        cy1, cx1 = max(y1, 0), max(x1, 0)
        cy2, cx2 = min(y2, shape[0]), min(x2, shape[1])
        if cy1 < cy2 and cx1 < cx2:
            image[cy1:cy2, cx1:cx2] += stamp[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1]
    return image


def leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from leaves(v)
    else:
        yield tree


# -------------------------------------------------------------- matching
def test_match_sky_is_one_to_one_and_nearest_first():
    ra = np.array([10.0, 10.0 + 0.3 / 3600, 10.0 + 5 / 3600])
    dec = np.zeros(3)
    i1, i2, sep = match_sky(ra[:1] + 0.1 / 3600, dec[:1], ra, dec, 1.0)
    assert i1.tolist() == [0] and i2.tolist() == [0]
    assert sep[0] == pytest.approx(0.1, abs=1e-6)
    # two sources near one star: only one gets it
    i1, i2, _ = match_sky(ra[:2], dec[:2], ra[:1], dec[:1], 1.0)
    assert i1.tolist() == [0] and i2.tolist() == [0]


# ---------------------------------------------------------------- frames
def test_frame_wcs_shift_reported_in_arcsec(truth, tables, tmp_path):
    frames = science(tables)
    shifted_dec, shifted_ra, exact = (frames[0], "c1"), (frames[1], "c2"), (frames[2], "c1")
    for (frame, chip), (dra, ddec) in {
        shifted_dec: (0.0, 0.1),
        shifted_ra: (0.1, 0.0),
        exact: (0.0, 0.0),
    }.items():
        _, hdr = truth_frame(truth, frame, chip)
        h = wcs_header(hdr)
        h["CRVAL2"] += ddec / 3600
        h["CRVAL1"] += dra / 3600 / math.cos(math.radians(h["CRVAL2"]))
        fits.PrimaryHDU(header=h).writeto(
            product_path(tmp_path, paths.FRAME_WCS, frame=frame, chip=chip)
        )
    # QA table: every zero point 0.03 mag too bright, one frame a further 0.05; seeing x 1.1
    rows = []
    for frame in frames:
        row = frame_row(tables, frame)
        for chip in ("c1", "c2"):
            extra = 0.05 if (frame, chip) == exact else 0.0
            rows.append((frame, chip, row["zero_point"] + 0.03 + extra, 1.1 * row["seeing"]))
    qa = Table(rows=rows, names=("frame", "chip", "zero_point", "fwhm_arcsec"))
    qa.write(product_path(tmp_path, paths.FRAME_QA), format="ascii.ecsv")

    out = score(tmp_path, truth)["frames"]
    assert out[f"{shifted_dec[0]}.c1"]["astrometric_rms_arcsec"] == pytest.approx(0.1, abs=0.005)
    assert out[f"{shifted_dec[0]}.c1"]["astrometric_offset_dec_arcsec"] == pytest.approx(
        0.1, abs=0.005
    )
    assert out[f"{shifted_ra[0]}.c2"]["astrometric_rms_arcsec"] == pytest.approx(0.1, abs=0.005)
    assert out[f"{shifted_ra[0]}.c2"]["astrometric_offset_ra_arcsec"] == pytest.approx(
        0.1, abs=0.005
    )
    assert out[f"{exact[0]}.c1"]["astrometric_rms_arcsec"] < 0.005
    assert out[f"{frames[0]}.c2"]["astrometric_rms_arcsec"] == NOT_PRODUCED
    assert out[f"{exact[0]}.c1"]["zero_point_error_mag"] == pytest.approx(0.08, abs=1e-9)
    assert out[f"{exact[0]}.c1"]["zero_point_error_rel_mag"] == pytest.approx(0.05, abs=1e-9)
    assert out[f"{frames[0]}.c1"]["zero_point_error_rel_mag"] == pytest.approx(0.0, abs=1e-9)
    assert out[f"{frames[0]}.c1"]["fwhm_ratio"] == pytest.approx(1.1)
    assert out["all"]["zero_point_offset_g_mag"] == pytest.approx(0.03, abs=1e-9)
    assert out["all"]["fwhm_median_ratio"] == pytest.approx(1.1)


# --------------------------------------------------------------- masters
def test_master_flat_error_and_photon_limit(truth, tables, tmp_path):
    rng = np.random.default_rng(1)
    flat = truth_image(truth, "flat_g", "c1")
    bad = truth_image(truth, "badpix", "c1") > 0
    master = flat / np.median(flat) * (1 + 0.01 * rng.standard_normal(flat.shape))
    path = product_path(tmp_path, paths.MASTER_FLAT, band="g", chip="c1")
    write_image_product(path, primary("FLAT", "c1", BAND="g", GAINMEAS=1.5 * 1.02), master)

    f = tables["frames"]
    sel = (f["imagetype"] == "flat") & (f["band"] == "g")
    dose = float(np.sum(f["illumination"][sel] * f["exptime"][sel]))
    limit = math.sqrt(np.mean(1.0 / (dose * flat[~bad])))

    out = score(tmp_path, truth)["masters"]
    m = out["flat.g.c1"]
    assert m["rms_error"] == pytest.approx(0.01, rel=0.03)
    assert m["photon_noise_limit"] == pytest.approx(limit, rel=1e-3)
    assert m["error_over_photon_limit"] == pytest.approx(0.01 / limit, rel=0.03)
    assert m["gain_error_pct"] == pytest.approx(2.0, abs=1e-6)
    assert out["flat.r.c1"] == NOT_PRODUCED


def test_master_bias_structure_ignores_offset(truth, tmp_path):
    rng = np.random.default_rng(2)
    raw = truth_image(truth, "bias", "c1")
    master = raw[0:256, 0:256] + 7.0 + 0.8 * rng.standard_normal((256, 256))
    path = product_path(tmp_path, paths.MASTER_BIAS, chip="c1")
    write_image_product(path, primary("BIAS", "c1", NCOMBINE=5, RDNOISE=4.5 * 0.98), master)
    # a perfect structure (plus an offset) on the other chip
    path = product_path(tmp_path, paths.MASTER_BIAS, chip="c2")
    write_image_product(path, primary("BIAS", "c2"), truth_image(truth, "bias", "c2")[:, :256] - 3)

    out = score(tmp_path, truth)["masters"]
    m = out["bias.c1"]
    assert m["rms_error_adu"] == pytest.approx(0.8, rel=0.03)
    assert m["expected_noise_adu"] == pytest.approx(4.5 / 1.5 / math.sqrt(5))
    assert m["error_over_noise"] == pytest.approx(0.8 / (4.5 / 1.5 / math.sqrt(5)), rel=0.03)
    assert m["read_noise_error_pct"] == pytest.approx(-2.0, abs=1e-6)
    assert out["bias.c2"]["rms_error_adu"] < 1e-3
    assert out["bias.c2"]["read_noise_error_pct"] == NOT_PRODUCED
    assert out["bias.c2"]["ncombine"] == 5  # counted in the truth


def test_master_dark_hot_pixel_recovery(truth, tmp_path):
    rng = np.random.default_rng(3)
    dark = truth_image(truth, "dark", "c1")
    bits = truth_image(truth, "badpix", "c1").astype(int)
    master = dark + 0.001 * rng.standard_normal(dark.shape)
    hot = np.flatnonzero((bits & 1).ravel())
    master.flat[hot[::2]] *= 1.5  # every other hot pixel 50 % too high
    write_image_product(
        product_path(tmp_path, paths.MASTER_DARK, chip="c1"), primary("DARK", "c1"), master
    )
    m = score(tmp_path, truth)["masters"]["dark.c1"]
    assert m["rms_error_e_per_s"] == pytest.approx(0.001, rel=0.05)
    assert m["n_hot_pixels"] == hot.size
    assert m["hot_pixel_recovery"] == pytest.approx((hot.size - hot[::2].size) / hot.size)
    assert m["hot_column_recovery"] == 1.0


# ------------------------------------------------------------ calibration
def test_cosmic_ray_recall_and_star_core_false_positives(truth, tables, tmp_path):
    # the science frame x chip with the most (even) true cosmic-ray pixels
    best, best_n = None, 0
    for frame in science(tables):
        for chip in ("c1", "c2"):
            n = int(truth_frame(truth, frame, chip)[0].sum())
            if n % 2 == 0 and n > best_n:
                best, best_n = (frame, chip), n
    assert best_n >= 2
    frame, chip = best
    cr, _ = truth_frame(truth, frame, chip)
    stars = on_chip(tables, frame, chip)
    radius = float(frame_row(tables, frame)["seeing"]) / PIXEL_SCALE / 2
    yy, xx = np.mgrid[0:256, 0:256]
    core = np.zeros((256, 256), bool)
    for x, y in zip(stars["x"], stars["y"], strict=True):
        core |= (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
    core &= ~cr
    k = 10
    mask = np.zeros((256, 256), np.uint16)
    mask[cr] |= np.uint16(Bit.COSMIC_RAY)
    mask.flat[np.flatnonzero(core.ravel())[:k]] |= np.uint16(Bit.COSMIC_RAY | Bit.BAD)
    sci = np.full((256, 256), 100.0)
    write_image_product(
        product_path(tmp_path / "all", paths.CALIBRATED, frame=frame, chip=chip),
        primary("CALIBRATED", chip),
        sci,
        var=sci,
        mask=mask,
    )
    half = np.zeros((256, 256), np.uint16)
    half.flat[np.flatnonzero(cr.ravel())[: best_n // 2]] = int(Bit.COSMIC_RAY)
    write_image_product(
        product_path(tmp_path / "half", paths.CALIBRATED, frame=frame, chip=chip),
        primary("CALIBRATED", chip),
        sci,
        var=sci,
        mask=half,
    )

    out = score(tmp_path / "all", truth)["calibration"]
    m = out[f"{frame}.{chip}"]
    assert m["cr_recall"] == 1.0
    assert m["n_core_pixels"] == int(core.sum())
    assert m["star_core_cr_false_positive_fraction"] == pytest.approx(k / core.sum())
    assert m["cr_false_positive_fraction"] == pytest.approx(k / (~cr).sum())
    assert out["all"]["cr_recall"] == 1.0
    other = next(key for key in out if key not in (f"{frame}.{chip}", "all"))
    assert out[other] == NOT_PRODUCED
    m = score(tmp_path / "half", truth)["calibration"][f"{frame}.{chip}"]
    assert m["cr_recall"] == pytest.approx(0.5)
    assert m["star_core_cr_false_positive_fraction"] == 0.0


def test_nonlinearity_residual(truth, tables, tmp_path):
    """Linear star images give ~0; pixel values x (1 - k v) give about -0.4 k P."""
    k = 2.4e-7
    for frame in science(tables):
        row = frame_row(tables, frame)
        fwhm = float(row["seeing"]) / PIXEL_SCALE
        sky = float(row["sky"] * row["exptime"])
        for chip in ("c1", "c2"):
            st = on_chip(tables, frame, chip, only_on=False)
            img = render_moffat((256, 256), st["x"], st["y"], st["flux"], fwhm, sky=sky)
            for name, sci in (("linear", img), ("nonlinear", img * (1 - k * img))):
                path = product_path(tmp_path / name, paths.CALIBRATED, frame=frame, chip=chip)
                write_image_product(
                    path, primary("CALIBRATED", chip), sci, mask=np.zeros(sci.shape, np.uint16)
                )
    lin = score(tmp_path / "linear", truth)["calibration"]["all"]
    assert lin["nonlinearity_n_stars"] >= 10
    assert abs(lin["nonlinearity_residual"]) < 2e-4
    nonlin = score(tmp_path / "nonlinear", truth)["calibration"]["all"]
    expected = -0.4 * k * nonlin["nonlinearity_ref_peak_e"]
    assert nonlin["nonlinearity_residual"] == pytest.approx(expected, rel=0.3)


# --------------------------------------------------------------- catalogs
def _fake_positions(tables, frame, chip, hdr, n, rng) -> tuple[np.ndarray, np.ndarray]:
    wcs = WCS(hdr)
    stars = tables["stars"]
    ra, dec = [], []
    while len(ra) < n:
        x, y = rng.uniform(10, 245, 2)
        r, d = wcs.all_pix2world(x, y, 0)
        sep = np.hypot((stars["ra"] - r) * math.cos(math.radians(d)), stars["dec"] - d) * 3600
        if sep.min() > 5:
            ra.append(float(r))
            dec.append(float(d))
    return np.array(ra), np.array(dec)


def test_frame_catalog_residual_false_detections_and_completeness(truth, tables, tmp_path):
    rng = np.random.default_rng(4)
    frame = science(tables)[0]  # a g frame
    st = on_chip(tables, frame, "c1")
    keep = st["g_mag"] < 20.0
    _, hdr = truth_frame(truth, frame, "c1")
    fra, fdec = _fake_positions(tables, frame, "c1", hdr, 5, rng)
    mag = np.concatenate([st["g_mag"][keep] + 0.05, rng.uniform(18, 20, 5)])
    err = 0.005 * 10 ** (0.4 * (mag - 15.5))
    cat = Table(
        {
            "ra": np.concatenate([st["ra"][keep], fra]),
            "dec": np.concatenate([st["dec"][keep], fdec]),
            "mag": mag,
            "mag_err": err,
            "x": np.zeros(mag.size),
            "y": np.zeros(mag.size),
            "flags": np.zeros(mag.size, dtype=np.int16),
        }
    )
    cat.write(product_path(tmp_path, paths.FRAME_CATALOG, frame=frame, chip="c1"))

    out = score(tmp_path, truth)["catalogs"]
    m = out[f"{frame}.c1"]
    assert m["n_false"] == 5
    assert m["false_detection_rate"] == pytest.approx(5 / len(cat))
    assert m["completeness"] == pytest.approx(keep.sum() / len(st))
    assert m["bright_mag_median"] == pytest.approx(0.05, abs=1e-9)
    assert m["bright_mag_robust_rms"] < 1e-6
    assert m["astrometric_rms_arcsec"] < 1e-3
    assert 19.5 <= m["completeness_50_mag"] <= 20.5  # few stars per 0.5-mag bin on one chip
    assert m["depth_5sigma_mag"] == pytest.approx(15.5 + 2.5 * math.log10(0.2171 / 0.005), abs=0.3)
    assert "colour_term_slope" not in m  # frame catalogs in one band only
    assert sum(b["n_false"] for b in m["bins"]) == 5
    assert out[f"{frame}.c2"] == NOT_PRODUCED


def _coadd_truth(tables, band):
    """Truth stars on a chip of at least one science frame of the band."""
    f = tables["frames"]
    frames = set(f["frame"][(f["imagetype"] == "science") & (f["band"] == band)])
    sf = tables["star_frames"]
    ids = set(sf["id"][np.isin(sf["frame"], list(frames)) & sf["on_chip"]])
    stars = tables["stars"]
    return stars[np.isin(stars["id"], list(ids))]


def test_coadd_catalog_colour_term(truth, tables, tmp_path):
    for band, term in (("g", 0.03), ("r", 0.0)):
        st = _coadd_truth(tables, band)
        colour = st["g_mag"] - st["r_mag"]
        mag = st[f"{band}_mag"] + term * colour
        cat = Table(
            {"ra": st["ra"], "dec": st["dec"], "mag": mag, "mag_err": np.full(len(st), 0.01)}
        )
        cat.write(product_path(tmp_path, paths.COADD_CATALOG, target="DEMOFIELD", band=band))
    out = score(tmp_path, truth)
    for band, term in (("g", 0.03), ("r", 0.0)):
        m = out["catalogs"][f"coadd DEMOFIELD.{band}"]
        assert m["completeness"] == 1.0 and m["n_false"] == 0
        assert m["colour_term_slope"] == pytest.approx(term, abs=1e-6)
        assert out["coadds"][f"DEMOFIELD.{band}"]["astrometric_rms_arcsec"] == NOT_PRODUCED


def test_coadd_image_astrometry(truth, tables, tmp_path):
    """Stars drawn on a coadd grid: the true WCS gives ~0, a 0.1" shifted one 0.1"."""
    st = _coadd_truth(tables, "r")
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [165.0, 32.0]
    w.wcs.crpix = [300.5, 160.5]
    w.wcs.cdelt = [-PIXEL_SCALE / 3600, PIXEL_SCALE / 3600]
    x, y = w.all_world2pix(st["ra"], st["dec"], 0)
    flux = 10 ** (-0.4 * (st["r_mag"] - 25.0))
    img = render_moffat((320, 600), x, y, flux, 1.1 / PIXEL_SCALE, sky=50.0)
    for name, ddec in (("exact", 0.0), ("shifted", 0.1)):
        h = w.to_header()
        h["CRVAL2"] += ddec / 3600
        path = product_path(tmp_path / name, paths.COADD, target="DEMOFIELD", band="r")
        write_image_product(path, primary("COADD", "all", BAND="r"), img, sci_header=h)
    m = score(tmp_path / "exact", truth)["coadds"]["DEMOFIELD.r"]
    assert m["n_astrometric"] >= 10
    assert m["astrometric_rms_arcsec"] < 0.01
    m = score(tmp_path / "shifted", truth)["coadds"]["DEMOFIELD.r"]
    assert m["astrometric_rms_arcsec"] == pytest.approx(0.1, abs=0.01)


# ------------------------------------------------------- nothing produced
def test_empty_results_report_not_produced(truth, tmp_path):
    out = score(tmp_path, truth)
    assert out["meta"]["instrument"] == INSTRUMENT and out["meta"]["night"] == NIGHT
    for section in SECTIONS:
        assert out[section], section
        assert all(v == NOT_PRODUCED for v in leaves(out[section])), section
    text = format_markdown(out)
    assert "Not produced yet" in text and "## catalogs" in text


def test_main_writes_json_and_markdown(truth, tmp_path, capsys):
    js, md = tmp_path / "out" / "score.json", tmp_path / "out" / "score.md"
    assert main([str(tmp_path), str(truth), "--json", str(js), "--markdown", str(md)]) == 0
    doc = json.loads(js.read_text())
    assert set(SECTIONS) <= set(doc)
    assert md.read_text().startswith("# imred score")
    assert "## masters" in capsys.readouterr().out


def test_galaxies_are_not_false_detections_and_flagged_stars_leave_the_bright_sample():
    from imred.score import score_catalog

    rng = np.random.default_rng(9)
    n = 30
    ra = 150 + rng.uniform(-0.02, 0.02, n)
    dec = 20 + rng.uniform(-0.02, 0.02, n)
    mag = rng.uniform(15, 18, n)
    galaxies = (np.array([150.03]), np.array([20.03]))
    # every star measured 0.01 mag bright, one (saturated) 0.5 mag faint; a source on the
    # galaxy; one false detection
    measured = mag - 0.01
    measured[0] += 0.51
    flags = np.zeros(n + 2, np.int16)
    flags[0] = 4  # SATURATED: a compromised measurement
    cat = Table(
        {
            "ra": np.concatenate([ra, galaxies[0], [150.035]]),
            "dec": np.concatenate([dec, galaxies[1], [19.97]]),
            "mag": np.concatenate([measured, [17.0, 19.0]]),
            "mag_err": np.full(n + 2, 0.005),
            "flags": flags,
        }
    )
    m = score_catalog(cat, ra, dec, mag, np.ones(n, bool), galaxies=galaxies)
    assert (m["n_false"], m["n_galaxies"], m["n_bright_flagged"]) == (1, 1, 1)
    assert m["n_bright"] == n - 1
    assert m["bright_mag_median"] == pytest.approx(-0.01, abs=1e-9)
    assert m["completeness"] == 1.0
    # without galaxies given, the galaxy's source is a false detection
    assert score_catalog(cat, ra, dec, mag, np.ones(n, bool))["n_false"] == 2
