"""Reference catalogs: online path on saved (fake) service answers, cache, epochs, files,
colour transformations, and the FITS-LDAC file SCAMP reads.

Nothing here touches the network except the ``remote_data`` tests at the end (skipped
unless IMRED_REMOTE_DATA is set). The service answers are small astropy tables built
with the column names and units astroquery returns for Gaia DR3 and the VizieR tables.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import MaskedColumn, Table
from astropy.wcs import WCS
from imred import refcat
from imred.errors import ImredError
from imred.refcat import (
    JESTER2005_BV,
    cache_file_name,
    colour_transform,
    get_reference_catalog,
    propagate_positions,
    write_ldac,
    write_ldac_file,
)

SDSS_FILE = (
    Path(__file__).resolve().parents[2].parent
    / "shared/data/cafos_ngc2420/refcat/sdss_ngc2420.fits"
)
SDSS_MAPPING = {"g_mag": "g", "g_err": "g_err", "r_mag": "r", "r_err": "r_err"}
RA0, DEC0, RADIUS = 114.602, 21.575, 0.15  # NGC 2420
MAS = 1.0 / 3.6e6  # degrees

needs_sdss = pytest.mark.skipif(
    not SDSS_FILE.is_file(), reason=f"real SDSS catalog not available ({SDSS_FILE})"
)


def _unit_vectors(ra, dec):
    a, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)


def _distance_deg(ra, dec, ra0, dec0):
    """Angular distance from unit vectors, atan2(|a x b|, a . b) (independent of the
    module's haversine, and precise at small angles)."""
    a = _unit_vectors(np.asarray(ra), np.asarray(dec))
    b = _unit_vectors(np.asarray(ra0), np.asarray(dec0))
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return np.degrees(np.arctan2(cross, np.sum(a * b, axis=-1)))


def _scatter(n, ra0, dec0, radius, seed):
    """n positions uniform in a cone (small-field approximation)."""
    rng = np.random.default_rng(seed)
    r = radius * np.sqrt(rng.uniform(0, 1, n))
    theta = rng.uniform(0, 2 * np.pi, n)
    dec = dec0 + r * np.sin(theta)
    ra = ra0 + r * np.cos(theta) / np.cos(np.radians(dec0))
    return ra, dec


# --------------------------------------------------------------------------------------
# saved service answers
# --------------------------------------------------------------------------------------


def gaia_answer(ra, dec, *, pmra=None, pmdec=None) -> Table:
    """What ``Gaia.launch_job_async(...).get_results()`` returns for our ADQL."""
    n = len(ra)
    rng = np.random.default_rng(7)
    t = Table()
    t["source_id"] = np.arange(3_000_000_000_000_000, 3_000_000_000_000_000 + n, dtype=np.int64)
    t["ra"], t["dec"] = np.asarray(ra, float), np.asarray(dec, float)
    t["ra"].unit = t["dec"].unit = "deg"
    t["ra_error"] = np.full(n, 0.05)
    t["dec_error"] = np.full(n, 0.04)
    pmra = np.zeros(n) if pmra is None else np.asarray(pmra, float)
    pmdec = np.zeros(n) if pmdec is None else np.asarray(pmdec, float)
    no_pm = ~np.isfinite(pmra)
    t["pmra"] = MaskedColumn(np.where(no_pm, 0.0, pmra), mask=no_pm, unit="mas / yr")
    t["pmdec"] = MaskedColumn(np.where(no_pm, 0.0, pmdec), mask=no_pm, unit="mas / yr")
    t["pmra_error"] = MaskedColumn(np.full(n, 0.1), mask=no_pm, unit="mas / yr")
    t["pmdec_error"] = MaskedColumn(np.full(n, 0.1), mask=no_pm, unit="mas / yr")
    t["parallax"] = MaskedColumn(np.full(n, 0.3), mask=no_pm, unit="mas")
    for name in ("ra_error", "dec_error"):
        t[name].unit = "mas"
    t["ref_epoch"] = np.full(n, 2016.0)
    t["ref_epoch"].unit = "yr"
    for band in ("g", "bp", "rp"):
        t[f"phot_{band}_mean_mag"] = rng.uniform(12, 19, n).astype(np.float32)
        t[f"phot_{band}_mean_mag"].unit = "mag"
        t[f"phot_{band}_mean_flux_over_error"] = np.full(n, 500.0, dtype=np.float32)
    return t


class FakeGaia:
    """Stands in for ``astroquery.gaia`` (whose import contacts the archive)."""

    def __init__(self, answer: Table | None = None, error: Exception | None = None):
        self.answer, self.error, self.queries = answer, error, []

    def launch_job_async(self, query):
        self.queries.append(query)
        if self.error is not None:
            raise self.error
        return types.SimpleNamespace(get_results=lambda: self.answer)

    def install(self, monkeypatch):
        module = types.ModuleType("astroquery.gaia")
        module.Gaia = self
        monkeypatch.setitem(sys.modules, "astroquery.gaia", module)
        return self


def ps1_answer() -> Table:
    """II/349/ps1 as astroquery.vizier returns it (one star without y)."""
    t = Table()
    t["objID"] = np.array([123456789012345678, 123456789012345679], dtype=np.int64)
    t["RAJ2000"] = [RA0, RA0 + 0.01]
    t["DEJ2000"] = [DEC0, DEC0 - 0.01]
    t["RAJ2000"].unit = t["DEJ2000"].unit = "deg"
    t["e_RAJ2000"] = [0.012, 0.020]
    t["e_DEJ2000"] = [0.010, 0.030]
    t["e_RAJ2000"].unit = t["e_DEJ2000"].unit = "arcsec"
    t["Epoch"] = [56000.0, 56500.0]
    t["Epoch"].unit = "d"
    for i, b in enumerate("grizy"):
        t[f"{b}mag"] = MaskedColumn([16.0 + i * 0.1, 17.0], mask=[False, b == "y"], unit="mag")
        t[f"e_{b}mag"] = MaskedColumn([0.01, 0.02], mask=[False, b == "y"], unit="mag")
    return t


def sdss_answer() -> Table:
    """V/154/sdss16: a star, a galaxy, a secondary detection of the star."""
    t = Table()
    t["objID"] = np.array([1237660000000000001, 1237660000000000002, 1237660000000000003])
    t["RA_ICRS"] = [RA0, RA0 + 0.02, RA0 + 1e-6]
    t["DE_ICRS"] = [DEC0, DEC0, DEC0]
    t["RA_ICRS"].unit = t["DE_ICRS"].unit = "deg"
    t["e_RA_ICRS"] = [0.05, 0.05, 0.05]
    t["e_DE_ICRS"] = [0.04, 0.04, 0.04]
    t["e_RA_ICRS"].unit = t["e_DE_ICRS"].unit = "arcsec"
    t["class"] = np.array([6, 3, 6], dtype=np.uint8)
    t["mode"] = np.array([1, 1, 2], dtype=np.uint8)
    t["ObsDate"] = [2004.5, 2004.5, 2004.5]
    for i, b in enumerate("ugriz"):
        t[f"{b}mag"] = [20.0 + i, 20.0, 20.0]  # model magnitudes
        t[f"e_{b}mag"] = [0.05, 0.05, 0.05]
        t[f"{b}pmag"] = [18.0 + i, 19.0, 18.0]  # PSF magnitudes: these are wanted
        t[f"e_{b}pmag"] = [0.02, 0.02, 0.02]
    return t


def twomass_answer() -> Table:
    t = Table()
    t["_2MASS"] = ["07382448+2134300"]
    t["RAJ2000"], t["DEJ2000"] = [RA0], [DEC0]
    t["RAJ2000"].unit = t["DEJ2000"].unit = "deg"
    t["errMaj"], t["errMin"] = [0.08], [0.06]
    t["errMaj"].unit = t["errMin"].unit = "arcsec"
    for b, m in (("J", 12.1), ("H", 11.8), ("K", 11.7)):
        t[f"{b}mag"], t[f"e_{b}mag"] = [m], [0.02]
    t["JD"] = [2451545.0]
    t["JD"].unit = "d"
    return t


def apass_answer() -> Table:
    t = Table()
    t["recno"] = np.array([42], dtype=np.int32)
    t["RAJ2000"], t["DEJ2000"] = [RA0], [DEC0]
    t["RAJ2000"].unit = t["DEJ2000"].unit = "deg"
    t["e_RAJ2000"], t["e_DEJ2000"] = [0.2], [0.3]
    t["e_RAJ2000"].unit = t["e_DEJ2000"].unit = "arcsec"
    for name, m in (
        ("Vmag", 12.0),
        ("Bmag", 12.6),
        ("g'mag", 12.3),
        ("r'mag", 11.9),
        ("i'mag", 11.7),
    ):
        t[name], t[f"e_{name}"] = [m], [0.03]
    return t


class FakeVizier:
    """Replaces ``VizierClass.query_region``; records what it was asked."""

    def __init__(self, answer: Table | None):
        self.answer, self.calls = answer, []

    def install(self, monkeypatch):
        from astroquery.utils import TableList
        from astroquery.vizier import VizierClass

        fake = self

        def query_region(vizier, coordinates, *, radius=None, catalog=None, **kwargs):
            fake.calls.append(
                {
                    "catalog": catalog,
                    "radius": radius,
                    "row_limit": vizier.ROW_LIMIT,
                    "columns": list(vizier.columns),
                    **kwargs,
                }
            )
            if fake.answer is None:
                return TableList([])
            return TableList([(catalog, fake.answer)])

        monkeypatch.setattr(VizierClass, "query_region", query_region)
        return self


def _no_query(*args, **kwargs):
    raise AssertionError("a service was queried")


# --------------------------------------------------------------------------------------
# online path: query -> normalise -> cache -> served from cache
# --------------------------------------------------------------------------------------


def test_gaia_query_normalises_caches_and_the_rerun_needs_no_network(tmp_path, monkeypatch):
    ra, dec = _scatter(40, RA0, DEC0, 0.2, seed=1)
    answer = gaia_answer(ra, dec)
    fake = FakeGaia(answer).install(monkeypatch)

    table = get_reference_catalog(RA0, DEC0, RADIUS, cache_dir=tmp_path)

    assert len(fake.queries) == 1
    assert "FROM gaiadr3.gaia_source" in fake.queries[0]
    assert (
        "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 114.60200000, 21.57500000, 0.15"
        in (fake.queries[0])
    )
    inside = _distance_deg(ra, dec, RA0, DEC0) <= RADIUS
    assert len(table) == inside.sum() > 0
    for name in (
        "source_id",
        "ra",
        "dec",
        "ra_err",
        "dec_err",
        "G_mag",
        "G_err",
        "BP_mag",
        "BP_err",
        "RP_mag",
        "RP_err",
        "pmra",
        "pmdec",
        "epoch",
    ):
        assert name in table.colnames
    assert table["ra_err"].unit == "mas"
    np.testing.assert_allclose(table["ra_err"], 0.05)
    np.testing.assert_array_equal(table["source_id"], answer["source_id"][inside])
    # 1.0857 / (flux/error) with the G zero-point uncertainty in quadrature
    np.testing.assert_allclose(table["G_err"], math.hypot(2.5 / math.log(10) / 500, 0.0027553202))
    cache = tmp_path / "gaia_dr3_114.6020+21.5750_r0.150.fits"
    assert cache.is_file()
    assert table.meta["REFFROM"] == "service"
    assert table.meta["CACHEFIL"] == str(cache)
    assert (table.meta["SOURCE"], table.meta["RA_CEN"], table.meta["RADIUS"]) == (
        "gaia_dr3",
        RA0,
        RADIUS,
    )
    assert table.meta["EMPTY"] is False

    # the service is gone: the second call is served from the cache, and nothing is asked
    monkeypatch.setattr(refcat, "_query_gaia", _no_query)
    fake.error = ConnectionError("no network")
    again = get_reference_catalog(RA0, DEC0, RADIUS, cache_dir=tmp_path, allow_network=False)
    assert len(fake.queries) == 1
    assert again.meta["REFFROM"] == "cache"
    assert again.meta["REFPATH"] == str(cache)
    for name in ("ra", "dec", "G_mag", "G_err", "source_id"):
        np.testing.assert_array_equal(again[name], table[name])


@pytest.mark.parametrize(
    ("source", "answer", "catalog", "expect"),
    [
        (
            "panstarrs_dr2",
            ps1_answer,
            "II/349/ps1",
            {"n": 2, "bands": "grizy", "ra_err": [12.0, 20.0], "g_mag": [16.0, 17.0]},
        ),
        (
            "sdss_dr16",
            sdss_answer,
            "V/154/sdss16",
            {"n": 1, "bands": "ugriz", "ra_err": [50.0], "g_mag": [19.0], "epoch": [2004.5]},
        ),
        (
            "2mass",
            twomass_answer,
            "II/246/out",
            {
                "n": 1,
                "bands": ("J", "H", "Ks"),
                "ra_err": [80.0],
                "Ks_mag": [11.7],
                "epoch": [2000.0],
            },
        ),
        (
            "apass",
            apass_answer,
            "II/336/apass9",
            {"n": 1, "bands": "BVgri", "ra_err": [200.0], "g_mag": [12.3], "source_id": [42]},
        ),
    ],
)
def test_vizier_sources_normalise(tmp_path, monkeypatch, source, answer, catalog, expect):
    fake = FakeVizier(answer()).install(monkeypatch)
    table = get_reference_catalog(RA0, DEC0, 0.1, source=source, cache_dir=tmp_path, timeout=5)

    (call,) = fake.calls
    assert call["catalog"] == catalog
    assert call["row_limit"] == -1 and call["columns"] == ["**"]
    assert math.isclose(call["radius"].to_value("deg"), 0.1)
    assert table.meta["CATALOG"] == catalog
    assert len(table) == expect["n"]
    for band in expect["bands"]:
        assert f"{band}_mag" in table.colnames and f"{band}_err" in table.colnames
    np.testing.assert_allclose(table["ra_err"], expect["ra_err"])  # arcsec -> mas
    for key in ("g_mag", "Ks_mag"):
        if key in expect:
            np.testing.assert_allclose(table[key], expect[key])
    if "epoch" in expect:
        np.testing.assert_allclose(table["epoch"], expect["epoch"], atol=0.01)
    if "source_id" in expect:
        np.testing.assert_array_equal(table["source_id"], expect["source_id"])
    assert (tmp_path / cache_file_name(source, RA0, DEC0, 0.1)).is_file()


def test_ps1_masked_magnitude_is_nan_and_epoch_is_decimal_year(tmp_path, monkeypatch):
    FakeVizier(ps1_answer()).install(monkeypatch)
    table = get_reference_catalog(RA0, DEC0, 0.1, source="panstarrs_dr2", cache_dir=tmp_path)
    assert np.isnan(table["y_mag"][1]) and np.isnan(table["y_err"][1])
    assert table["y_mag"][0] == pytest.approx(16.4)
    # MJD 56000 = 2012-03-14
    assert table["epoch"][0] == pytest.approx(2012.2, abs=0.01)


def test_empty_field_is_an_empty_table_flagged_and_cached(tmp_path, monkeypatch):
    fake = FakeVizier(None).install(monkeypatch)
    table = get_reference_catalog(RA0, DEC0, 0.05, source="apass", cache_dir=tmp_path)
    assert len(table) == 0
    assert table.meta["EMPTY"] is True and table.meta["NSTARS"] == 0
    assert {"ra", "dec", "B_mag", "V_err"} <= set(table.colnames)

    again = get_reference_catalog(
        RA0, DEC0, 0.05, source="apass", cache_dir=tmp_path, allow_network=False
    )
    assert len(fake.calls) == 1
    assert len(again) == 0 and again.meta["EMPTY"] is True and again.meta["REFFROM"] == "cache"


def test_a_larger_cached_cone_is_reused_and_cut_down(tmp_path, monkeypatch):
    ra, dec = _scatter(300, RA0, DEC0, 0.3, seed=2)
    FakeGaia(gaia_answer(ra, dec)).install(monkeypatch)
    big = get_reference_catalog(RA0, DEC0, 0.3, cache_dir=tmp_path)
    monkeypatch.setattr(refcat, "_query_gaia", _no_query)

    # a smaller field, off-centre but inside the cached cone
    ra1, dec1 = RA0 + 0.05, DEC0 - 0.05
    small = get_reference_catalog(ra1, dec1, 0.12, cache_dir=tmp_path)
    assert small.meta["REFFROM"] == "cache"
    assert small.meta["REFPATH"].endswith("gaia_dr3_114.6020+21.5750_r0.300.fits")
    expected = _distance_deg(big["ra"], big["dec"], ra1, dec1) <= 0.12
    assert len(small) == expected.sum() > 0
    np.testing.assert_array_equal(np.sort(small["source_id"]), np.sort(big["source_id"][expected]))

    # a field sticking out of the cached cone is not served from it
    with pytest.raises(ImredError, match="no gaia_dr3 reference catalog"):
        get_reference_catalog(RA0 + 0.25, DEC0, 0.1, cache_dir=tmp_path, allow_network=False)


def test_a_catalog_file_put_at_the_cache_path_is_used(tmp_path, monkeypatch):
    """What the error message tells a user without network to do."""
    monkeypatch.setattr(refcat, "_query_vizier", _no_query)
    ra, dec = _scatter(30, RA0, DEC0, 0.2, seed=6)
    mine = Table({"ra": ra, "dec": dec, "J_mag": np.linspace(10, 14, 30)})
    mine.write(tmp_path / cache_file_name("2mass", RA0, DEC0, 0.1))
    table = get_reference_catalog(RA0, DEC0, 0.1, source="2mass", cache_dir=tmp_path)
    assert table.meta["REFFROM"] == "cache"
    assert len(table) == (_distance_deg(ra, dec, RA0, DEC0) <= 0.1).sum() > 0
    assert np.isnan(table["epoch"]).all()


def test_cache_file_name():
    assert (
        cache_file_name("gaia_dr3", 114.602, 21.575, 0.15)
        == "gaia_dr3_114.6020+21.5750_r0.150.fits"
    )
    assert cache_file_name("2mass", 5.1, -0.5, 1.0) == "2mass_005.1000-00.5000_r1.000.fits"
    assert cache_file_name("apass", -0.5, 10, 0.2).startswith("apass_359.5000+10.0000")


# --------------------------------------------------------------------------------------
# no catalog to be had
# --------------------------------------------------------------------------------------


def _assert_actionable(message: str, source: str, cache: Path) -> None:
    assert "\n" not in message
    assert source in message
    assert "RA 114.6020" in message and "Dec +21.5750" in message and "radius 0.150" in message
    assert str(cache) in message
    assert "source: file" in message and "Put a catalog file there" in message


def test_no_network_no_cache_no_file_names_source_field_and_cache_path(tmp_path, monkeypatch):
    monkeypatch.setattr(refcat, "_query_gaia", _no_query)
    with pytest.raises(ImredError) as info:
        get_reference_catalog(RA0, DEC0, RADIUS, cache_dir=tmp_path / "cache", allow_network=False)
    message = str(info.value)
    _assert_actionable(
        message, "gaia_dr3", tmp_path / "cache" / "gaia_dr3_114.6020+21.5750_r0.150.fits"
    )
    assert "allow_network=False" in message


def test_failed_query_is_the_same_actionable_error(tmp_path, monkeypatch):
    FakeGaia(error=ConnectionError("Name or service not known")).install(monkeypatch)
    with pytest.raises(ImredError) as info:
        get_reference_catalog(RA0, DEC0, RADIUS, cache_dir=tmp_path)
    message = str(info.value)
    _assert_actionable(message, "gaia_dr3", tmp_path / "gaia_dr3_114.6020+21.5750_r0.150.fits")
    assert "ConnectionError: Name or service not known" in message
    assert not list(tmp_path.iterdir())  # nothing cached


def test_hanging_query_times_out(tmp_path, monkeypatch):
    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(10)
        return None

    monkeypatch.setattr(refcat, "_query_vizier", hang)
    try:
        with pytest.raises(ImredError, match=r"TimeoutError: no answer within 0.2 s"):
            get_reference_catalog(
                RA0, DEC0, RADIUS, source="2mass", cache_dir=tmp_path, timeout=0.2
            )
    finally:
        release.set()


def test_bad_settings(tmp_path):
    with pytest.raises(ImredError, match="unknown reference catalog source 'gaia'"):
        get_reference_catalog(RA0, DEC0, RADIUS, source="gaia", cache_dir=tmp_path)
    with pytest.raises(ImredError, match="radius"):
        get_reference_catalog(RA0, DEC0, 0.0, cache_dir=tmp_path)
    with pytest.raises(ImredError, match="needs `catalog_file`"):
        get_reference_catalog(RA0, DEC0, RADIUS, source="file", cache_dir=tmp_path)
    with pytest.raises(ImredError, match="does not exist"):
        get_reference_catalog(
            RA0,
            DEC0,
            RADIUS,
            source="file",
            cache_dir=tmp_path,
            catalog_file=tmp_path / "nope.fits",
        )
    with pytest.raises(ImredError, match="only with source 'file'"):
        get_reference_catalog(RA0, DEC0, RADIUS, cache_dir=tmp_path, catalog_file="x.fits")


# --------------------------------------------------------------------------------------
# epochs
# --------------------------------------------------------------------------------------


def test_proper_motion_100_mas_per_year_moves_0p9_arcsec_in_9_years(tmp_path, monkeypatch):
    ra = np.array([RA0, RA0 + 0.01, RA0 - 0.01])
    dec = np.array([DEC0, DEC0, DEC0 + 0.01])
    answer = gaia_answer(ra, dec, pmra=[100.0, 0.0, np.nan], pmdec=[0.0, -50.0, np.nan])
    FakeGaia(answer).install(monkeypatch)

    at_2016 = get_reference_catalog(RA0, DEC0, RADIUS, cache_dir=tmp_path)
    at_2025 = get_reference_catalog(RA0, DEC0, RADIUS, cache_dir=tmp_path, epoch=2025.0)
    assert at_2016.meta["EPOCH"] == "catalog" and at_2025.meta["EPOCH"] == 2025.0
    assert at_2025.meta["PROPER"] is True

    east = (at_2025["ra"] - at_2016["ra"]) * np.cos(np.radians(at_2016["dec"])) * 3600
    north = (at_2025["dec"] - at_2016["dec"]) * 3600
    # star 0: 100 mas/yr east for 9 yr -> 0.9" east, nothing north
    assert east[0] == pytest.approx(0.9, abs=1e-6)
    assert north[0] == pytest.approx(0.0, abs=1e-6)
    # star 1: 50 mas/yr south -> 0.45" south
    assert north[1] == pytest.approx(-0.45, abs=1e-6)
    assert east[1] == pytest.approx(0.0, abs=1e-6)
    # star 2 has no proper motion: it stays, at its catalog epoch
    assert (at_2025["ra"][2], at_2025["dec"][2]) == (at_2016["ra"][2], at_2016["dec"][2])
    np.testing.assert_array_equal(at_2025["epoch"], [2025.0, 2025.0, 2016.0])
    # position errors grow with the proper-motion errors: hypot(0.05, 9 * 0.1) mas
    assert at_2025["ra_err"][0] == pytest.approx(math.hypot(0.05, 0.9))
    assert at_2025["ra_err"][2] == pytest.approx(0.05)


def test_propagation_is_a_great_circle_step_even_near_the_pole():
    ra, dec, moved = propagate_positions(
        [10.0, 200.0], [89.99, -45.0], [100.0, 0.0], [0.0, 100.0], 2016.0, 2025.0
    )
    assert moved.all()
    step = _distance_deg(ra, dec, [10.0, 200.0], [89.99, -45.0])
    # arctan(0.9"): a tangent-plane step of 0.9" is an arc of 0.9" to 1e-12
    np.testing.assert_allclose(step * 3600, 0.9, atol=1e-7)
    assert dec[1] - (-45.0) == pytest.approx(0.9 / 3600, abs=1e-10)


# --------------------------------------------------------------------------------------
# the file source (real SDSS photometry of NGC 2420)
# --------------------------------------------------------------------------------------


@needs_sdss
def test_file_cone_selection_matches_direct_computation(tmp_path):
    raw = Table.read(SDSS_FILE)
    for ra, dec, radius in ((RA0, DEC0, 0.1), (RA0 + 0.05, DEC0 + 0.03, 0.07), (RA0, DEC0, 0.3)):
        table = get_reference_catalog(
            ra,
            dec,
            radius,
            source="file",
            catalog_file=SDSS_FILE,
            columns=SDSS_MAPPING,
            cache_dir=tmp_path,
        )
        expected = _distance_deg(np.asarray(raw["ra"]), np.asarray(raw["dec"]), ra, dec) <= radius
        assert len(table) == expected.sum()
        np.testing.assert_array_equal(table["source_id"], np.flatnonzero(expected))
        assert table.meta["REFFROM"] == "file" and table.meta["REFPATH"] == str(SDSS_FILE)
    assert len(table) == len(raw) == 2301  # 0.3 deg holds the whole 14.14' file
    assert {"g_mag", "g_err", "r_mag", "r_err"} <= set(table.colnames)
    assert np.isnan(table["ra_err"]).all()
    assert not list(tmp_path.iterdir())  # a file source writes no cache


@needs_sdss
def test_jester_b_and_v_from_sdss_g_r(tmp_path):
    table = get_reference_catalog(
        RA0,
        DEC0,
        0.3,
        source="file",
        catalog_file=SDSS_FILE,
        columns=SDSS_MAPPING,
        cache_dir=tmp_path,
    )
    out = colour_transform(table, JESTER2005_BV)
    # rows 0-2 of the file: g, g_err, r, r_err =
    rows = {
        0: (17.348, 0.007, 16.884, 0.0065),
        1: (16.279, 0.0065, 15.864, 0.006),
        2: (15.110, 0.0065, 14.220, 0.0055),
    }
    # by hand from the README: B = g + 0.39 (g - r) + 0.21, V = g - 0.59 (g - r) - 0.01
    hand_b = {0: 17.73896, 1: 16.65085, 2: 15.6671}
    hand_v = {0: 17.06424, 1: 16.02415, 2: 14.5749}
    for i, (g, g_err, r, r_err) in rows.items():
        assert hand_b[i] == pytest.approx(g + 0.39 * (g - r) + 0.21, abs=1e-9)  # my arithmetic
        assert hand_v[i] == pytest.approx(g - 0.59 * (g - r) - 0.01, abs=1e-9)
        row = out[out["source_id"] == i][0]
        assert row["B_mag"] == pytest.approx(hand_b[i], abs=2e-5)
        assert row["V_mag"] == pytest.approx(hand_v[i], abs=2e-5)
        # B = 1.39 g - 0.39 r, V = 0.41 g + 0.59 r: independent errors
        assert row["B_err"] == pytest.approx(math.hypot(1.39 * g_err, 0.39 * r_err), rel=1e-5)
        assert row["V_err"] == pytest.approx(math.hypot(0.41 * g_err, 0.59 * r_err), rel=1e-5)
    assert "B_mag" not in table.colnames  # the input is left alone


def test_file_source_csv_and_ecsv_with_and_without_mapping(tmp_path):
    ra, dec = _scatter(50, 30.0, -20.0, 0.2, seed=3)
    t = Table(
        {
            "RAJ2000": ra,
            "DEJ2000": dec,
            "Vmag": np.linspace(10, 15, 50),
            "e_Vmag": np.full(50, 0.01),
        }
    )
    t.write(tmp_path / "cat.ecsv")
    plain = Table({"ra": ra, "dec": dec, "V_mag": np.linspace(10, 15, 50)})
    plain.write(tmp_path / "cat.csv")
    mapping = {"ra": "RAJ2000", "dec": "DEJ2000", "V_mag": "Vmag", "V_err": "e_Vmag"}
    a = get_reference_catalog(
        30.0,
        -20.0,
        0.1,
        source="file",
        catalog_file=tmp_path / "cat.ecsv",
        columns=mapping,
        cache_dir=tmp_path,
    )
    b = get_reference_catalog(
        30.0, -20.0, 0.1, source="file", catalog_file=tmp_path / "cat.csv", cache_dir=tmp_path
    )
    expected = (_distance_deg(ra, dec, 30.0, -20.0) <= 0.1).sum()
    assert len(a) == len(b) == expected > 0
    np.testing.assert_allclose(a["V_mag"], b["V_mag"])
    assert "V_err" in a.colnames and "V_err" not in b.colnames

    with pytest.raises(ImredError, match=r"no column 'gmag' \(setting `columns`: g_mag: gmag\)"):
        get_reference_catalog(
            30.0,
            -20.0,
            0.1,
            source="file",
            catalog_file=tmp_path / "cat.ecsv",
            columns={**mapping, "g_mag": "gmag"},
            cache_dir=tmp_path,
        )
    with pytest.raises(ImredError, match="has no 'ra' column"):
        get_reference_catalog(
            30.0, -20.0, 0.1, source="file", catalog_file=tmp_path / "cat.ecsv", cache_dir=tmp_path
        )
    (tmp_path / "cat.txt").write_text("ra dec\n")
    with pytest.raises(ImredError, match=r"use \.fits, \.csv or \.ecsv"):
        get_reference_catalog(
            30.0, -20.0, 0.1, source="file", catalog_file=tmp_path / "cat.txt", cache_dir=tmp_path
        )


# --------------------------------------------------------------------------------------
# colour transformations
# --------------------------------------------------------------------------------------


def test_colour_transform_spec_errors():
    t = Table({"g_mag": [15.0], "g_err": [0.01], "r_mag": [14.5], "r_err": [0.02]})
    out = colour_transform(
        t,
        {
            "X": {
                "base": "r_mag",
                "terms": {"g_mag-r_mag": 0.5, "g_mag": 0.1},
                "zero": 1.0,
                "scatter": 0.03,
            }
        },
    )
    # X = r + 0.5 (g - r) + 0.1 g + 1 = 0.6 g + 0.5 r + 1
    assert out["X_mag"][0] == pytest.approx(0.6 * 15.0 + 0.5 * 14.5 + 1.0)
    assert out["X_err"][0] == pytest.approx(
        math.sqrt((0.6 * 0.01) ** 2 + (0.5 * 0.02) ** 2 + 0.03**2)
    )
    with pytest.raises(ImredError, match="column 'i_mag' is not in the catalog"):
        colour_transform(t, {"I": {"base": "i_mag"}})
    with pytest.raises(ImredError, match="unknown key"):
        colour_transform(t, {"B": {"base": "g_mag", "term": {}}})
    with pytest.raises(ImredError, match="`base`"):
        colour_transform(t, {"B": {"terms": {"g_mag-r_mag": 1.0}}})
    with pytest.raises(ImredError, match="already has a column 'g_mag'"):
        colour_transform(t, {"g": {"base": "r_mag"}})
    no_err = Table({"g_mag": [15.0], "r_mag": [14.5]})
    assert np.isnan(colour_transform(no_err, JESTER2005_BV)["B_err"][0])


# --------------------------------------------------------------------------------------
# FITS-LDAC for SCAMP
# --------------------------------------------------------------------------------------


def _gaia_like(n=300, seed=4, radius=0.15) -> Table:
    """A normalised Gaia-like table (with proper motions), at its catalog epoch."""
    ra, dec = _scatter(n, RA0, DEC0, radius, seed=seed)
    rng = np.random.default_rng(seed)
    t = Table()
    t["source_id"] = np.arange(n, dtype=np.int64)
    t["ra"], t["dec"] = ra, dec
    t["ra_err"], t["dec_err"] = np.full(n, 0.05), np.full(n, 0.04)
    t["epoch"] = np.full(n, 2016.0)
    t["pmra"], t["pmdec"] = rng.normal(0, 5, n), rng.normal(0, 5, n)
    t["pmra_err"], t["pmdec_err"] = np.full(n, 0.1), np.full(n, np.nan)
    t["G_mag"] = rng.uniform(13, 19, n)
    t["G_err"] = np.full(n, 0.003)
    t.meta.update(
        SOURCE="gaia_dr3",
        CATALOG="gaiadr3.gaia_source",
        RA_CEN=RA0,
        DEC_CEN=DEC0,
        RADIUS=radius,
        EPOCH="catalog",
    )
    return t


def test_write_ldac_layout_scamp_reads(tmp_path):
    table = _gaia_like(20)
    table["G_mag"][3] = np.nan  # no magnitude: left out
    table["ra_err"][5] = np.nan  # no position error: the default
    path = tmp_path / "ref.cat"
    assert write_ldac(table, path, mag_column="G_mag") == 19

    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS"]
        imhead = hdul["LDAC_IMHEAD"]
        assert imhead.columns.names == ["Field Header Card"]
        ncards = imhead.header["NAXIS1"] // 80
        assert imhead.header["TFORM1"] == f"{80 * ncards}A"
        assert imhead.header["TDIM1"] == f"(80, {ncards})"
        assert len(imhead.data) == 1
        stored = fits.Header.fromstring("".join(c.ljust(80) for c in imhead.data[0][0]))
        assert (
            stored["SOURCE"] == "gaia_dr3" and stored["NREF"] == 19 and stored["MAGCOL"] == "G_mag"
        )
        start = imhead.fileinfo()["datLoc"]
        objects = hdul["LDAC_OBJECTS"]
        units = {c.name: c.unit for c in objects.columns}
        formats = {c.name: c.format for c in objects.columns}
        data = objects.data
        x_world, erra, obsdate = (
            data["X_WORLD"].copy(),
            data["ERRA_WORLD"].copy(),
            data["OBSDATE"].copy(),
        )
        pm_err_dec = data["PMDELTAERR_J2000"].copy()
    # the header cards keep their blanks (NULs inside a card crash SCAMP 2.10)
    raw = path.read_bytes()[start : start + 80 * ncards]
    assert b"\x00" not in raw and raw.rstrip().endswith(b"END")
    assert units == {
        "X_WORLD": "deg",
        "Y_WORLD": "deg",
        "ERRA_WORLD": "deg",
        "ERRB_WORLD": "deg",
        "ERRTHETA_WORLD": "deg",
        "MAG": "mag",
        "MAGERR": "mag",
        "OBSDATE": "yr",
        "PMALPHA_J2000": "mas/yr",
        "PMDELTA_J2000": "mas/yr",
        "PMALPHAERR_J2000": "mas/yr",
        "PMDELTAERR_J2000": "mas/yr",
        "FLAGS": None,
    }
    assert formats["X_WORLD"] == "D" and formats["Y_WORLD"] == "D" and formats["OBSDATE"] == "D"
    kept = np.isfinite(table["G_mag"])
    np.testing.assert_array_equal(x_world, table["ra"][kept])
    expected_erra = np.where(np.isnan(table["ra_err"]), 100.0, table["ra_err"])[kept] * MAS
    np.testing.assert_allclose(erra, expected_erra, rtol=1e-6)
    np.testing.assert_array_equal(obsdate, 2016.0)
    np.testing.assert_array_equal(pm_err_dec, 0.0)

    write_ldac(table, path, mag_column="G_mag", epoch=2021.24)
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul["LDAC_OBJECTS"].data["OBSDATE"], 2021.24)
    with pytest.raises(ImredError, match="no magnitude column 'V_mag'"):
        write_ldac(table, path, mag_column="V_mag")


def _image_catalog(path: Path, ref: Table, seed: int = 5) -> tuple[WCS, int]:
    """A SExtractor-like LDAC catalog of a 1000x1000, 0.5"/px image rotated by 1 deg,
    whose header carries a first-guess WCS off by (+3", -4") and without the rotation."""
    rng = np.random.default_rng(seed)
    scale = 0.5 / 3600

    def tan(crval, rotation_deg):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crpix = [500.5, 500.5]
        w.wcs.crval = crval
        c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
        w.wcs.cd = np.array([[-scale * c, scale * s], [scale * s, scale * c]])
        return w

    truth = tan([RA0, DEC0], 1.0)
    x, y = truth.all_world2pix(ref["ra"], ref["dec"], 1)
    inside = (x > 1) & (x < 1000) & (y > 1) & (y < 1000)
    m = int(inside.sum())
    x = x[inside] + rng.normal(0, 0.05, m)
    y = y[inside] + rng.normal(0, 0.05, m)
    flux = 10 ** (-0.4 * (np.asarray(ref["G_mag"])[inside] - 25))
    guess = tan([RA0 + 3 / 3600, DEC0 - 4 / 3600], 0.0)
    header = fits.Header()
    header["SIMPLE"], header["BITPIX"], header["NAXIS"] = True, -32, 2
    header["NAXIS1"], header["NAXIS2"] = 1000, 1000
    header["EXPTIME"], header["FILTER"] = 60.0, "V"
    header["DATE-OBS"], header["MJD-OBS"] = "2021-03-28T21:00:00", 59301.875
    header.update(guess.to_header())
    header["EQUINOX"] = 2000.0
    objects = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="XWIN_IMAGE", format="D", unit="pixel", array=x),
            fits.Column(name="YWIN_IMAGE", format="D", unit="pixel", array=y),
            fits.Column(name="ERRAWIN_IMAGE", format="E", unit="pixel", array=np.full(m, 0.05)),
            fits.Column(name="ERRBWIN_IMAGE", format="E", unit="pixel", array=np.full(m, 0.05)),
            fits.Column(name="ERRTHETAWIN_IMAGE", format="E", unit="deg", array=np.zeros(m)),
            fits.Column(name="FLUX_AUTO", format="E", unit="count", array=flux),
            fits.Column(name="FLUXERR_AUTO", format="E", unit="count", array=flux / 200),
            fits.Column(name="FLAGS", format="I", array=np.zeros(m, np.int16)),
        ]
    )
    write_ldac_file(path, header, objects)
    return truth, m


@pytest.mark.skipif(shutil.which("scamp") is None, reason="scamp is not installed")
def test_scamp_solves_an_image_catalog_against_our_reference_file(tmp_path):
    ref = _gaia_like(300)
    assert write_ldac(ref, tmp_path / "ref.cat", mag_column="G_mag") == 300
    truth, n_detections = _image_catalog(tmp_path / "image.cat", ref)
    assert n_detections > 40
    cmd = [
        "scamp",
        "image.cat",
        "-ASTREF_CATALOG",
        "FILE",
        "-ASTREFCAT_NAME",
        "ref.cat",
        "-MATCH_RESOL",
        "0.5",
        "-SOLVE_PHOTOM",
        "N",
        "-CHECKPLOT_TYPE",
        "NONE",
        "-WRITE_XML",
        "N",
        "-NTHREADS",
        "1",
        "-DISTORT_DEGREES",
        "1",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    log = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, log
    assert "Error" not in log
    loaded = re.search(r"(\d+) astrometric references loaded from ref\.cat", log)
    assert loaded, log
    assert 0 < int(loaded.group(1)) <= 300
    head = tmp_path / "image.head"
    assert head.is_file(), log
    solved = fits.Header.fromstring(head.read_text(), sep="\n")
    # the solution finds the true pointing (the guess was 5" off) and the 1 deg rotation
    offset = _distance_deg(solved["CRVAL1"], solved["CRVAL2"], *truth.wcs.crval) * 3600
    assert offset < 0.05
    rotation = math.degrees(math.atan2(solved["CD1_2"], -solved["CD1_1"]))
    assert rotation == pytest.approx(1.0, abs=0.02)


# --------------------------------------------------------------------------------------
# the real services (skipped by default)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["gaia_dr3", "panstarrs_dr2", "sdss_dr16", "2mass", "apass"])
@pytest.mark.remote_data
@pytest.mark.skipif(
    not os.environ.get("IMRED_REMOTE_DATA"), reason="queries real services: set IMRED_REMOTE_DATA=1"
)
def test_real_services_answer_for_ngc2420(tmp_path, source):
    table = get_reference_catalog(RA0, DEC0, 0.05, source=source, cache_dir=tmp_path, timeout=60)
    assert len(table) > 0
    assert table.meta["REFFROM"] == "service"
    assert np.isfinite(table["ra"]).all() and np.isfinite(table["dec"]).all()
    mags = [c for c in table.colnames if c.endswith("_mag")]
    assert any(np.isfinite(table[c]).any() for c in mags)
