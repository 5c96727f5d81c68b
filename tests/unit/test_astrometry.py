"""imred.astrometry against the simulator's truth, with real numbers.

One ``--small`` demo night (2 chips of 256x256, 0.4 arcsec/pixel, 6 science frames)
is shared by the module. Its truth holds the true TAN-SIP WCS of every chip in every
science frame, the true pixel position of every star and the reference catalog the
pipeline reads (``refcat.fits``: positions scattered by 10 mas for bright stars, up
to 100 mas at the faint limit).
"""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from imred import astrometry
from imred.astrometry import AstrometryResult, initial_wcs, match_and_fit, read_wcs, write_wcs
from imred.instrument import Instrument, load_instrument
from imred.simulate import simulate_night

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"
SHAPE = (256, 256)  # the demo_small chips' trimmed grid (ny, nx)
SCALE = 0.4  # arcsec per pixel
NOISE_PX = 0.02  # centroid noise added to the true positions


class Night:
    """The small demo night's truth."""

    def __init__(self, out: Path):
        t = out / "truth"
        self.out = out
        frames = Table.read(t / "frames.ecsv")
        self.science = frames[frames["imagetype"] == "science"]
        self.star_frames = Table.read(t / "star_frames.ecsv")
        self.stars = Table.read(t / "stars.ecsv")
        self.refcat = Table.read(t / "refcat.fits")
        self.instrument = load_instrument("demo_small")

    def truth_wcs(self, frame: str, chip: str) -> WCS:
        header = fits.getheader(self.out / "truth" / "frames" / f"{frame}.fits", chip.upper())
        return WCS(header)

    def sources(self, frame: str, chip: str, rng: np.random.Generator) -> Table:
        """True pixel positions of the stars on the chip, plus Gaussian centroid noise."""
        sf = self.star_frames
        rows = sf[(sf["frame"] == frame) & (sf["chip"] == chip) & sf["on_chip"]]
        n = len(rows)
        return Table(
            {
                "x": np.asarray(rows["x"]) + rng.normal(0.0, NOISE_PX, n),
                "y": np.asarray(rows["y"]) + rng.normal(0.0, NOISE_PX, n),
                "flux": np.asarray(rows["flux"]),
                "flags": np.zeros(n, dtype=np.int16),
            }
        )

    def frames_and_chips(self):
        for row in self.science:
            for chip in self.instrument.chips:
                yield row, chip


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Night:
    out = tmp_path_factory.mktemp("astrometry_night")
    simulate_night(DEMO, out, small=True)
    return Night(out)


def _separations(w1: WCS, w2: WCS, xy: np.ndarray) -> np.ndarray:
    """Angular distance (arcsec) between where two WCS put the same 0-based pixels."""
    a = w1.all_pix2world(xy, 0)
    b = w2.all_pix2world(xy, 0)
    dra = (a[:, 0] - b[:, 0] + 180.0) % 360.0 - 180.0
    return np.hypot(dra * np.cos(np.radians(b[:, 1])), a[:, 1] - b[:, 1]) * 3600.0


def _grid(n: int = 9, shape=SHAPE) -> np.ndarray:
    ny, nx = shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    return np.column_stack([gx.ravel(), gy.ravel()])


CENTRE_AND_CORNERS = np.array([[127.5, 127.5], [0, 0], [255, 0], [0, 255], [255, 255]])


def _perturbed(wcs: WCS, shift_arcsec: tuple[float, float], rotation_deg: float) -> WCS:
    """``wcs`` moved on the sky by (east, north) arcsec and turned by ``rotation_deg``."""
    out = wcs.deepcopy()
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    out.wcs.cd = rot @ wcs.wcs.cd
    dec = wcs.wcs.crval[1]
    out.wcs.crval = [
        wcs.wcs.crval[0] + shift_arcsec[0] / 3600.0 / math.cos(math.radians(dec)),
        dec + shift_arcsec[1] / 3600.0,
    ]
    out.wcs.set()
    return out


# ================================================================ initial WCS
def test_initial_wcs_is_within_the_pointing_error_of_the_truth(night):
    """Commanded pointing + header rotator: off by the pointing error (~1") and the
    rotator offset (0.08 deg, 0.17" at the far corner, 120" from the axis), no more."""
    worst = 0.0
    for row, chip in night.frames_and_chips():
        w0 = initial_wcs(
            night.instrument, chip, row["ra_cmd"], row["dec_cmd"], row["rotator"], SHAPE
        )
        truth = night.truth_wcs(row["frame"], chip.name)
        d = _separations(w0, truth, CENTRE_AND_CORNERS)
        cos_dec = math.cos(math.radians(row["dec"]))
        pointing_error = 3600.0 * math.hypot(
            (row["ra_cmd"] - row["ra"]) * cos_dec, row["dec_cmd"] - row["dec"]
        )
        # at the chip centre (56" from the axis) the 0.08 deg rotator offset moves 0.08"
        assert d[0] == pytest.approx(pointing_error, abs=0.15), (row["frame"], chip.name)
        assert d.max() < 3.0, (row["frame"], chip.name, d)
        worst = max(worst, d.max())
    assert 0.3 < worst < 3.0  # measured: 0.31 .. 2.25 arcsec


def test_initial_wcs_with_the_true_pointing_and_angle_is_the_truth_without_distortion(night):
    """With the true optical axis and position angle only the radial distortion is left
    (k r^3 = 0.012 px = 0.005" at the far corner)."""
    inst = night.instrument
    for row, chip in night.frames_and_chips():
        rotator = (row["pa"] - inst.rotator.get("offset_deg", 0.0)) / inst.rotator.get("sign", 1)
        w = initial_wcs(inst, chip, row["ra"], row["dec"], rotator, SHAPE)
        d = _separations(w, night.truth_wcs(row["frame"], chip.name), _grid())
        assert d.max() < 0.006, (row["frame"], chip.name, d.max())


def test_a_wrong_convention_is_far_off(night):
    """The same pointing with east flipped, or the chips swapped, misses by arcminutes:
    the test above would catch either mistake."""
    row = night.science[0]
    doc = copy.deepcopy(night.instrument.raw_doc)
    doc["rotator"]["flip_x"] = True  # east to the right
    flipped = Instrument(doc, "demo_small (east flipped)")
    swapped_doc = copy.deepcopy(night.instrument.raw_doc)
    for c in swapped_doc["chips"]:
        c["geometry"]["offset_arcsec"][0] *= -1.0  # offsets read as west instead of east
    swapped = Instrument(swapped_doc, "demo_small (offset sign flipped)")
    for chip in night.instrument.chips:
        truth = night.truth_wcs(row["frame"], chip.name)
        args = (chip.name, row["ra_cmd"], row["dec_cmd"], row["rotator"], SHAPE)
        good = _separations(initial_wcs(night.instrument, *args), truth, CENTRE_AND_CORNERS)
        east = _separations(initial_wcs(flipped, *args), truth, CENTRE_AND_CORNERS)
        offset = _separations(initial_wcs(swapped, *args), truth, CENTRE_AND_CORNERS)
        assert good.max() < 3.0
        # the reference pixel stays put, the corners mirror: 2 x 128 px x 0.4" = 102"
        assert east.max() > 90.0, east
        assert offset.min() > 100.0, offset  # the chip lands 112" away


def test_initial_wcs_binning_and_trim_offset(night):
    """A 2x2-binned pixel sees the sky of the centre of its four unbinned pixels; a
    trim offset shifts the grid by that many unbinned pixels."""
    row = night.science[0]
    inst, chip = night.instrument, night.instrument.chips[1]
    args = (chip, row["ra_cmd"], row["dec_cmd"], row["rotator"])
    w1 = initial_wcs(inst, *args, SHAPE)
    w2 = initial_wcs(inst, *args, (128, 128), binning="2x2")
    xy = _grid(5, (128, 128))
    np.testing.assert_allclose(
        w2.all_pix2world(xy, 0), w1.all_pix2world(2 * xy + 0.5, 0), rtol=0, atol=1e-10
    )
    assert w2.pixel_shape == (128, 128)
    w3 = initial_wcs(inst, *args, (250, 240), trim_offset=(6, 3))
    np.testing.assert_allclose(
        w3.all_pix2world(xy, 0), w1.all_pix2world(xy + np.array([6, 3]), 0), rtol=0, atol=1e-10
    )
    assert math.hypot(*np.diag(w1.wcs.cd)) * 3600 / math.sqrt(2) == pytest.approx(SCALE)


# ================================================================ the solution
def _expected_rms(result: AstrometryResult, night: Night) -> float:
    """2-D rms the residuals should have: the injected centroid noise plus the actual
    errors of the catalog positions of the stars used (refcat minus truth), less the
    fitted degrees of freedom."""
    used = result.matches[result.matches["used"]]
    ref = night.refcat[used["ref"]]
    true = night.stars[np.searchsorted(night.stars["id"], ref["source_id"])]
    assert np.all(true["id"] == ref["source_id"])
    cos_dec = np.cos(np.radians(np.asarray(ref["dec"])))
    d_ra = (np.asarray(ref["ra"]) - np.asarray(true["ra"])) * cos_dec * 3600.0
    d_dec = (np.asarray(ref["dec"]) - np.asarray(true["dec"])) * 3600.0
    var = 2 * (NOISE_PX * SCALE) ** 2 + np.mean(d_ra**2 + d_dec**2)
    n = len(used)
    n_coeff = (result.sip_order + 1) * (result.sip_order + 2) // 2
    return float(np.sqrt(var * (n - n_coeff) / n))


@pytest.mark.parametrize(
    ("shift", "rotation"),
    [((14.0, 14.0), 0.1), ((-20.0, 12.0), -0.4)],
    ids=["20arcsec-0.1deg", "23arcsec-0.4deg"],
)
def test_match_and_fit_recovers_the_true_wcs(night, shift, rotation):
    """True positions + 0.02 px noise against refcat.fits, starting 20" and 0.1 deg off
    (and 23" and 0.4 deg off): the fit is as good as the catalog allows.

    Measured: 0.007 .. 0.024 arcsec rms over the chip, mean 0.014 (both cases); about
    25 stars per chip whose catalog positions are off by 10 to 100 mas (the faint ones),
    so ~0.015" is the information limit of a linear fit (weighted least squares).
    """
    rng = np.random.default_rng(7)
    rms_truth, ratios = [], []
    for row, chip in night.frames_and_chips():
        w0 = initial_wcs(
            night.instrument, chip, row["ra_cmd"], row["dec_cmd"], row["rotator"], SHAPE
        )
        start = _perturbed(w0, shift, rotation)
        truth = night.truth_wcs(row["frame"], chip.name)
        assert _separations(start, truth, CENTRE_AND_CORNERS).min() > 15.0
        result = match_and_fit(
            night.sources(row["frame"], chip.name, rng), night.refcat, start, mag_column="r_mag"
        )
        assert result.ok, result.reason
        assert result.reason == ""
        assert result.n_matches >= 20
        d = _separations(result.wcs, truth, _grid(17))
        rms_truth.append(float(np.sqrt(np.mean(d**2))))
        assert rms_truth[-1] < 0.03, (row["frame"], chip.name, rms_truth[-1])
        ratios.append(result.rms_arcsec / _expected_rms(result, night))
        assert 0.75 < ratios[-1] < 1.25, (row["frame"], chip.name, ratios[-1])
        assert result.rms_arcsec == pytest.approx(
            math.hypot(result.rms_ra_arcsec, result.rms_dec_arcsec)
        )
        assert result.wcs.pixel_shape == (256, 256)
    assert np.mean(rms_truth) < 0.02
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.1)


def test_match_and_fit_with_an_exact_catalog_reaches_the_centroid_noise(night):
    """The same with the true star positions as the catalog: what is left is the
    0.02 px (0.008") centroid noise, and the reported rms says so."""
    exact = night.stars["id", "ra", "dec", "r_mag"]
    rng = np.random.default_rng(11)
    for row, chip in night.frames_and_chips():
        w0 = initial_wcs(
            night.instrument, chip, row["ra_cmd"], row["dec_cmd"], row["rotator"], SHAPE
        )
        result = match_and_fit(
            night.sources(row["frame"], chip.name, rng),
            exact,
            _perturbed(w0, (14.0, 14.0), 0.1),
            mag_column="r_mag",
        )
        assert result.ok, result.reason
        d = _separations(result.wcs, night.truth_wcs(row["frame"], chip.name), _grid(17))
        assert np.sqrt(np.mean(d**2)) < 0.008, (row["frame"], chip.name)  # 0.0013 .. 0.0053
        n = result.n_matches
        n_coeff = (result.sip_order + 1) * (result.sip_order + 2) // 2
        expected = NOISE_PX * SCALE * math.sqrt(2 * (n - n_coeff) / n)  # 0.0107"
        assert result.rms_arcsec == pytest.approx(expected, rel=0.3)


def test_sip_order_3_recovers_a_strong_distortion(night):
    """A distortion 300x the demo's (1.4" at the far corner), 400 stars: TAN-SIP order 3
    reproduces it, and its AP/BP invert A/B."""
    row, chip = night.science[1], night.instrument.chips[0]
    truth = night.truth_wcs(row["frame"], chip.name)
    truth.sip = type(truth.sip)(truth.sip.a * 300, truth.sip.b * 300, None, None, truth.sip.crpix)
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 255, (400, 2))
    ra, dec = truth.all_pix2world(xy[:, 0], xy[:, 1], 0)
    refcat = Table({"ra": ra, "dec": dec, "r_mag": rng.uniform(14, 20, 400)})
    sources = Table({"x": xy[:, 0] + rng.normal(0, 0.01, 400), "y": xy[:, 1], "flux": np.ones(400)})
    sources["y"] += rng.normal(0, 0.01, 400)
    w0 = initial_wcs(night.instrument, chip, row["ra_cmd"], row["dec_cmd"], row["rotator"], SHAPE)
    assert _separations(w0, truth, CENTRE_AND_CORNERS).max() > 1.5
    result = match_and_fit(sources, refcat, _perturbed(w0, (14.0, 14.0), 0.1), mag_column="r_mag")
    assert result.ok, result.reason
    assert result.sip_order == 3
    assert result.method == "imred-python TAN-SIP order 3"
    assert list(result.wcs.wcs.ctype) == ["RA---TAN-SIP", "DEC--TAN-SIP"]
    assert result.n_matches >= 395
    grid = _grid(17)
    assert _separations(result.wcs, truth, grid).max() < 0.005
    assert result.rms_arcsec == pytest.approx(0.01 * SCALE * math.sqrt(2), rel=0.15)
    # astropy round trip, and the AP/BP inverse on its own
    back = result.wcs.all_world2pix(result.wcs.all_pix2world(grid, 0), 0)
    assert np.abs(back - grid).max() < 1e-4  # all_world2pix iterates to 1e-4 px
    foc = result.wcs.sip_pix2foc(grid, 0)
    assert np.abs(result.wcs.sip_foc2pix(foc, 0) - grid).max() < 0.01
    assert np.abs(foc - grid).max() > 1.0  # the distortion is there to invert


# ================================================================ failures
def test_failures_come_back_with_a_reason(night):
    row, chip = night.science[0], night.instrument.chips[0]
    w0 = initial_wcs(night.instrument, chip, row["ra_cmd"], row["dec_cmd"], row["rotator"], SHAPE)
    sources = night.sources(row["frame"], chip.name, np.random.default_rng(1))

    empty = match_and_fit(sources[:0], night.refcat, w0)
    assert not empty.ok and empty.reason == "no sources"
    assert empty.wcs is w0 and empty.n_matches == 0 and math.isnan(empty.rms_arcsec)

    flagged = sources.copy()
    flagged["flags"] = 16  # MASKED
    result = match_and_fit(flagged, night.refcat, w0)
    assert not result.ok and result.reason.startswith("no sources")
    flagged["flags"] = 1  # NEIGHBOURS: kept by default, not with flag_mask=-1
    assert match_and_fit(flagged, night.refcat, w0).ok
    assert not match_and_fit(flagged, night.refcat, w0, flag_mask=-1).ok

    result = match_and_fit(sources, night.refcat[:0], w0)
    assert not result.ok and result.reason == "the reference catalog is empty"

    elsewhere = night.refcat.copy()
    elsewhere["dec"] += 1.0
    result = match_and_fit(sources, elsewhere, w0)
    assert not result.ok and result.reason.startswith("no reference stars in the field")

    result = match_and_fit(sources[:5], night.refcat, w0)
    assert not result.ok and result.reason.startswith("fewer matches than 10")

    scrambled = sources.copy()
    rng = np.random.default_rng(5)
    scrambled["x"] = rng.uniform(0, 255, len(sources))
    scrambled["y"] = rng.uniform(0, 255, len(sources))
    result = match_and_fit(scrambled, night.refcat, w0)
    assert not result.ok
    assert result.reason.startswith(("no offset found", "fewer matches than 10")), result.reason

    result = match_and_fit(sources, night.refcat, w0, max_rms_arcsec=0.01)
    assert not result.ok and result.reason.startswith("rms ")
    assert result.n_matches > 10  # the rejected fit is still reported

    with pytest.raises(ValueError, match="sip_order"):
        match_and_fit(sources, night.refcat, w0, sip_order=0)


# ================================================================ the product
def test_write_and_read_the_frame_wcs_product(night, tmp_path):
    row, chip = night.science[2], night.instrument.chips[1]
    w0 = initial_wcs(night.instrument, chip, row["ra_cmd"], row["dec_cmd"], row["rotator"], SHAPE)
    truth = night.truth_wcs(row["frame"], chip.name)
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 255, (200, 2))
    ra, dec = truth.all_pix2world(xy[:, 0], xy[:, 1], 0)
    result = match_and_fit(
        Table({"x": xy[:, 0], "y": xy[:, 1], "flux": np.ones(200)}),
        Table({"ra": ra, "dec": dec}),
        w0,
        sip_order=2,
    )
    assert result.ok and result.sip_order == 2  # no noise: the BIC keeps the SIP terms
    path = tmp_path / "astrometry" / "frame.c2.wcs.fits"
    write_wcs(path, result.wcs, [*result.header_cards(), ("IMREDVER", "test", "software")])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = read_wcs(path)
        plain = WCS(fits.getheader(path))
    assert caught == []
    grid = _grid(17)
    assert _separations(back, result.wcs, grid).max() < 1e-6
    assert _separations(plain, result.wcs, grid).max() < 1e-6
    assert back.pixel_shape == (256, 256)
    np.testing.assert_allclose(back.sip.ap, result.wcs.sip.ap, rtol=1e-12, atol=0)

    with fits.open(path) as hdul:
        assert len(hdul) == 1 and hdul[0].data.size == 0
        h = hdul[0].header
    assert (h["CTYPE1"], h["CTYPE2"]) == ("RA---TAN-SIP", "DEC--TAN-SIP")
    assert h["A_ORDER"] == h["B_ORDER"] == 2 and h["AP_ORDER"] >= 3
    assert "CD1_1" in h and "PC1_1" not in h and h["RADESYS"] == "ICRS"
    assert (h["IMAGEW"], h["IMAGEH"]) == (256, 256)
    assert h["ASTOK"] is True and h["ASTREAS"] == "" and h["ASTNMAT"] == result.n_matches >= 180
    assert h["ASTMETH"] == "imred-python TAN-SIP order 2"
    assert h["ASTRMS"] < 1e-3 and h["IMREDVER"] == "test"

    # a failed solution is written too (the initial WCS, undefined rms), plain TAN
    failed = match_and_fit(Table({"x": [], "y": [], "flux": []}), night.refcat, w0)
    write_wcs(path, failed.wcs, failed.header_cards())
    h = fits.getheader(path)
    assert h["ASTOK"] is False and h["ASTREAS"] == "no sources" and h["ASTRMS"] is None
    assert h["CTYPE1"] == "RA---TAN" and "A_ORDER" not in h
    assert _separations(read_wcs(path), w0, grid).max() < 1e-6

    with pytest.raises(ValueError, match="CRPIX1"):
        write_wcs(path, w0, {"CRPIX1": 3.0})


def test_module_has_no_snakemake_import():
    source = Path(astrometry.__file__).read_text()
    assert "snakemake" not in source
