"""Instrument files: each camera's headers normalise to the values imred expects.

For every instrument file a header is written in that camera's conventions (the
primary header merged with the chip's extension header where the camera writes
extensions, as the observation log does) and every normalised value is checked.
CAFOS is also checked on a real raw header (skipped where the shared data are absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from imred.errors import ImredError
from imred.instrument import INSTRUMENT_DIR, load_instrument, pointing_to_icrs
from imred.sections import parse_section

ROOT = Path(__file__).resolve().parents[2]
CAFOS_RAW = ROOT.parent / "shared" / "data" / "cafos_ngc2420" / "raw"
CAFOS_SCIENCE_B = CAFOS_RAW / "science" / "NGC2420" / "B" / "uamA_0023.fits"
NGC2420 = SkyCoord(114.602 * u.deg, 21.575 * u.deg)  # cluster centre (ICRS)

INSTRUMENTS = (
    "demo",
    "cafos",
    "odi_podi",
    "odi_5x6",
    "prime",
    "itelescope_t20",
    "ratir",
    "lmi",
    "ioi",
)


def header(literal: dict | None = None, **cards) -> fits.Header:
    """A FITS header: ``literal`` keywords as written, then keyword=value pairs in which
    ``_`` stands for ``-`` (DATE_OBS is DATE-OBS)."""
    out = fits.Header()
    for key, value in (literal or {}).items():
        out[key] = value
    for key, value in cards.items():
        out[key.replace("_", "-")] = value
    return out


def merged(primary: fits.Header, extension: fits.Header) -> fits.Header:
    """Primary header merged with an extension header (the extension wins)."""
    out = fits.Header()
    for hdr in (primary, extension):
        for card in hdr.cards:
            out[card.keyword] = card.value
    return out


def normalise(name: str, hdr: fits.Header, chip: str | None = None):
    inst = load_instrument(name)
    return inst.normalise(hdr, inst.chip(chip) if chip else inst.chips[0])


def approx(value):
    return pytest.approx(value, rel=0, abs=1e-9)


# ------------------------------------------------------------------ all files
@pytest.mark.parametrize("name", INSTRUMENTS)
def test_instrument_file_loads_and_is_schema_valid(name):
    inst = load_instrument(name)
    assert inst.name == name
    assert (INSTRUMENT_DIR / f"{name}.yaml").is_file()
    assert inst.chips
    assert inst.site is not None and -180 <= inst.site["longitude_deg"] <= 360


# ---------------------------------------------------------------------- demo
def test_demo_extension_header_merged_with_primary():
    primary = header(
        IMAGETYP="object",
        FILTER="SDSS r",
        EXPTIME=30.0,
        DATE_OBS="2024-01-10T03:04:05.5",
        OBJECT="M 67",
        RA="08:51:18.0",
        DEC="+11:48:00",
        AIRMASS=1.234,
        CCDSUM="2 2",
        ROTANG=12.5,
    )
    ext = header(EXTNAME="CCD2", GAIN=1.62, RDNOISE=5.1, CCDTEMP=-110.0)
    values, problems = normalise("demo", merged(primary, ext), "c2")
    assert problems == []
    assert values["imagetype"] == "science"
    assert values["band"] == "r"
    assert values["exptime"] == 30.0
    assert values["dateobs"] == "2024-01-10T03:04:05.500"
    assert values["mjd"] == approx(60319 + (3 * 3600 + 4 * 60 + 5.5) / 86400)
    assert values["target"] == "M 67"
    assert values["ra"] == approx(132.825)
    assert values["dec"] == approx(11.8)
    assert values["airmass"] == 1.234
    assert values["binning"] == "2x2"
    assert values["readout_mode"] == "normal"
    assert values["gain"] == 1.62
    assert values["read_noise"] == 5.1
    assert values["temperature"] == -110.0
    assert values["rotator"] == 12.5
    assert values["saturation"] == 60000


def test_demo_chip_defaults_when_header_has_no_gain():
    primary = header(IMAGETYP="zero", EXPTIME=0.0, DATE_OBS="2024-01-10T01:00:00")
    values, problems = normalise("demo", merged(primary, header(EXTNAME="CCD1")), "c1")
    assert problems == []
    assert values["imagetype"] == "bias"
    assert values["binning"] == "1x1"
    assert values["gain"] == 1.5 and values["read_noise"] == 4.5
    assert values["band"] is None


# --------------------------------------------------------------------- CAFOS
def test_cafos_real_science_header():
    if not CAFOS_SCIENCE_B.is_file():
        pytest.skip(f"real CAFOS data not present ({CAFOS_SCIENCE_B}); see ../shared/data")
    inst = load_instrument("cafos")
    raw = fits.getheader(CAFOS_SCIENCE_B)
    values, problems = inst.normalise(raw, inst.chips[0])
    assert problems == []
    assert values["imagetype"] == "science"
    assert values["band"] == "B"
    assert values["exptime"] == 2.0
    assert values["dateobs"] == "2021-03-28T23:06:34.000"
    assert values["binning"] == "1x1"
    assert values["readout_mode"] == "normal"
    assert values["gain"] == 1.43
    assert values["read_noise"] == 7.4
    assert values["temperature"] == -99.0
    assert values["target"] == "NCG2420 B"  # the real typo is kept
    assert values["ra"] == approx(114.915783)
    assert values["dec"] == approx(21.52591)
    assert values["saturation"] == 65000

    # RA/DEC are apparent coordinates of the date: as J2000 they miss the cluster by
    # ~0.3 deg; converted to ICRS they land on it.
    raw_sep = SkyCoord(values["ra"] * u.deg, values["dec"] * u.deg).separation(NGC2420)
    assert 0.25 < raw_sep.deg < 0.35
    ra, dec = pointing_to_icrs(
        [values["ra"]], [values["dec"]], [values["mjd"]], inst.pointing, inst.site
    )
    icrs_sep = SkyCoord(ra[0] * u.deg, dec[0] * u.deg).separation(NGC2420)
    assert icrs_sep.arcmin < 5.0
    assert inst.pointing["frame"] == "apparent"


def test_cafos_real_night_is_usable():
    """Every real frame normalises cleanly and the minimum counts accept the real night."""
    if not CAFOS_RAW.is_dir():
        pytest.skip(f"real CAFOS data not present ({CAFOS_RAW}); see ../shared/data")
    inst = load_instrument("cafos")
    rows = []
    for path in sorted(CAFOS_RAW.rglob("*.fits")):
        values, problems = inst.normalise(fits.getheader(path), inst.chips[0])
        assert problems == [], path
        rows.append(values)
    kinds = [v["imagetype"] for v in rows]
    assert kinds.count("bias") == 2 and kinds.count("science") == 11
    flats = sorted(v["band"] for v in rows if v["imagetype"] == "flat")
    assert flats == ["B", "V"]
    minimum = inst.calibration["min_frames"]
    assert kinds.count("bias") >= minimum["bias"]
    assert all(flats.count(b) >= minimum["flat"] for b in ("B", "V"))


def test_cafos_sections_and_site_from_header_facts():
    inst = load_instrument("cafos")
    chip = inst.chips[0]
    assert parse_section(chip.datasec) == (slice(0, 1024), slice(0, 1024))
    assert parse_section(chip.trimsec) == (slice(2, 1024), slice(0, 1024))
    assert inst.site["latitude_deg"] == 37.224 and inst.site["longitude_deg"] == -2.5463
    assert inst.chip_value(chip, "pixel_scale") == 0.53


def test_cafos_flat_binned_header():
    hdr = header(
        IMAGETYP="flat",
        INSFLNAM="JohnsonV  ",
        EXPTIME=3.5,
        DATE_OBS="2021-03-18T17:56:43",
        OBJECT="[flat] dome V",
        RA=83.152821,
        DEC=-30.0,
        CCDBINX=2,
        CCDBINY=2,
        CCDSPEED="normal  ",
        CCDSENS=1.43,
        CCDRON=7.4,
        CCDTEMP=-99.0,
        PA_CASS=0.0,
    )
    values, problems = normalise("cafos", hdr)
    assert problems == []
    assert values["imagetype"] == "flat"
    assert values["band"] == "V"
    assert values["exptime"] == 3.5
    assert values["dateobs"] == "2021-03-18T17:56:43.000"
    assert values["binning"] == "2x2"
    assert values["gain"] == 1.43 and values["read_noise"] == 7.4
    assert values["ra"] == approx(83.152821) and values["dec"] == approx(-30.0)
    assert values["rotator"] == 0.0


# ------------------------------------------------------------------- bad input
def test_missing_required_keyword_is_a_problem_naming_it():
    hdr = header(IMAGETYP="science", INSFLNAM="JohnsonB", DATE_OBS="2021-03-28T23:06:34")
    values, problems = normalise("cafos", hdr)
    assert values["exptime"] is None
    assert [p for p in problems if "EXPTIME" in p] == [
        "exptime: required keyword EXPTIME is missing"
    ]


def test_unmapped_image_type_says_to_add_it_to_the_map():
    hdr = header(IMAGETYP="arc", INSFLNAM="JohnsonB", EXPTIME=10.0, DATE_OBS="2021-03-28T23:06:34")
    values, problems = normalise("cafos", hdr)
    assert values["imagetype"] is None
    assert len(problems) == 1
    assert "IMAGETYP='arc'" in problems[0]
    assert "add it under header.imagetype.map" in problems[0]


def test_unmapped_band_is_a_problem():
    hdr = header(
        IMAGETYP="science", INSFLNAM="Halpha", EXPTIME=10.0, DATE_OBS="2021-03-28T23:06:34"
    )
    values, problems = normalise("cafos", hdr)
    assert values["band"] is None
    assert problems == [
        "band: INSFLNAM='Halpha' is not in the instrument's band map "
        "(add it under header.band.map in the instrument file)"
    ]


@pytest.mark.parametrize(
    ("path", "typo"),
    [
        (("pixel_scale",), "pixel_scael"),
        (("header", "exptime"), "exptme"),
        (("chips", 0, "datasec"), "data_sec"),
    ],
)
def test_typo_in_instrument_file_is_an_error_naming_the_key(tmp_path, path, typo):
    doc = yaml.safe_load((INSTRUMENT_DIR / "cafos.yaml").read_text())
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[typo] = parent.pop(path[-1])
    bad = tmp_path / "cafos_typo.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ImredError) as err:
        load_instrument(bad)
    assert f"'{typo}'" in str(err.value)
    assert str(bad) in str(err.value)


# ----------------------------------------------------------------------- ODI
def _odi_primary():
    return header(
        OBSTYPE="OBJECT",
        FILTER="odi_g",
        EXPTIME=300.0,
        DATE_OBS="2015-10-08T19:59:49.1",
        TIME_OBS="19:59:49.1",
        OBJECT="M53",
        RA="13:12:55.3",
        DEC="+18:10:05",
        AIRMASS=1.08,
        CCDBIN1=1,
        CCDBIN2=1,
    )


@pytest.mark.parametrize(("name", "n_chips"), [("odi_podi", 9), ("odi_5x6", 30)])
def test_odi_one_chip_per_ota_extension(name, n_chips):
    inst = load_instrument(name)
    assert len(inst.chips) == n_chips
    assert all(c.extension == f"{c.name}.SCI" for c in inst.chips)
    assert inst.chip("OTA33").extension == "OTA33.SCI"
    ext = header(XTENSION="IMAGE", EXTNAME="OTA33.SCI", GAIN=1.31, RDNOISE=7.9)
    values, problems = inst.normalise(merged(_odi_primary(), ext), inst.chip("OTA33"))
    assert problems == []
    assert values["imagetype"] == "science"
    assert values["band"] == "g"
    assert values["exptime"] == 300.0
    assert values["dateobs"] == "2015-10-08T19:59:49.100"
    assert values["binning"] == "1x1"
    assert values["gain"] == 1.31 and values["read_noise"] == 7.9
    assert values["ra"] == approx(198.230416666667)
    assert values["dec"] == approx(18.168055555556)
    assert values["saturation"] == 58000
    assert inst.chip_value(inst.chip("OTA33"), "pixel_scale") == 0.11


def test_odi_layouts():
    podi = {c.name for c in load_instrument("odi_podi").chips}
    assert podi == {f"OTA{x}{y}" for x in (2, 3, 4) for y in (2, 3, 4)}
    five = {c.name for c in load_instrument("odi_5x6").chips}
    assert five == {f"OTA{x}{y}" for x in range(1, 6) for y in range(1, 7)}


def test_odi_dome_flat_and_narrow_band():
    inst = load_instrument("odi_5x6")
    primary = _odi_primary()
    primary["OBSTYPE"] = "DFLAT"
    primary["FILTER"] = "odi_NB695"
    primary["CCDBIN1"], primary["CCDBIN2"] = 2, 2
    ext = header(EXTNAME="OTA55.SCI", GAIN=1.25, RDNOISE=8.2)
    values, problems = inst.normalise(merged(primary, ext), inst.chip("OTA55"))
    assert problems == []
    assert values["imagetype"] == "flat"
    assert values["band"] == "odi_NB695"
    assert values["binning"] == "2x2"
    assert values["gain"] == 1.25


# --------------------------------------------------------------------- PRIME
def _prime_header(**extra):
    return header(
        CHIP=3,
        EXPTIME=59.6,
        DATE_OBS="2023-05-12T22:13:14.5",
        OBJECT="Swift_1246989",
        RA="08:20:09.400",
        DEC="-46:40:34.300",
        FILTER1="Open",
        FILTER2="J",
        AIRMASS=1.05,
        ROTOFF="nan",
        **extra,
    )


def test_prime_one_file_per_chip_selected_by_name():
    inst = load_instrument("prime")
    name = "00087801C3.ramp.fits"
    chips = [c.name for c in inst.chips if c.matches_file(name, fits.Header())]
    assert chips == ["C3"]
    assert [
        c.name for c in inst.chips if c.matches_file("00087801C1.ramp.fits.fz", fits.Header())
    ] == ["C1"]
    assert inst.wants_file(name) and not inst.wants_file("00087801C3.sky.flat.fits")


def test_prime_header():
    values, problems = normalise("prime", _prime_header(), "C3")
    assert problems == []
    assert values["imagetype"] == "science"  # no type keyword: the ramps are science
    assert values["band"] == "J"  # FILTER1 'Open' is skipped
    assert values["exptime"] == 59.6
    assert values["dateobs"] == "2023-05-12T22:13:14.500"
    assert values["binning"] == "1x1"
    assert values["ra"] == approx(125.039166666667)
    assert values["dec"] == approx(-46.676194444444)
    assert values["rotator"] == 48.0  # the header ROTOFF is not trusted
    assert values["gain"] == 1.0


def test_prime_crop_and_chip_offsets():
    inst = load_instrument("prime")
    for chip in inst.chips:
        # trimsec is the python crop [4:4092, 4:4092]
        assert parse_section(chip.trimsec) == (slice(4, 4092), slice(4, 4092))
        east, north = chip.geometry["offset_arcsec"]
        assert np.hypot(east, north) / 3600 == pytest.approx(0.445, abs=0.003)
    assert inst.chip_value(inst.chips[0], "kind") == "nir-ramp"
    assert inst.rotator["default_deg"] == 48


def test_prime_pointing_is_fk5_j2000():
    inst = load_instrument("prime")
    values, _ = normalise("prime", _prime_header(), "C1")
    ra, dec = pointing_to_icrs(
        [values["ra"]], [values["dec"]], [values["mjd"]], inst.pointing, inst.site
    )
    shift = SkyCoord(ra[0] * u.deg, dec[0] * u.deg).separation(
        SkyCoord(values["ra"] * u.deg, values["dec"] * u.deg)
    )
    assert shift.arcsec < 0.1  # FK5 J2000 ~ ICRS


# ---------------------------------------------------------------- iTelescope
def _itelescope_header(binning: int, **extra):
    return header(
        IMAGETYP="Light Frame",
        FILTER="Ha",
        DATE_OBS="2021-07-08T22:06:04",
        OBJECT="CygnusLoop_x1_y1",
        OBJCTRA="20 51 28.0",
        OBJCTDEC="+30 40 59",
        XBINNING=binning,
        YBINNING=binning,
        EGAIN=1.47,
        GAIN=0.0,
        SET_TEMP=-15.0,
        CCD_TEMP=-14.8,
        PEDESTAL=0,
        **extra,
    )


@pytest.mark.parametrize("binning", [1, 2])
def test_itelescope_binning_1_and_2(binning):
    values, problems = normalise("itelescope_t20", _itelescope_header(binning, EXPTIME=300.0))
    assert problems == []
    assert values["imagetype"] == "science"
    assert values["band"] == "Ha"
    assert values["exptime"] == 300.0
    assert values["dateobs"] == "2021-07-08T22:06:04.000"
    assert values["binning"] == f"{binning}x{binning}"
    assert values["gain"] == 1.47  # EGAIN (e-/ADU) before GAIN
    assert values["read_noise"] == 11.0  # instrument default
    assert values["temperature"] == -14.8  # CCD-TEMP before SET-TEMP
    assert values["ra"] == approx(312.866666666667)
    assert values["dec"] == approx(30.683055555556)


def test_itelescope_exposure_used_when_exptime_absent():
    hdr = _itelescope_header(1, EXPOSURE=180.0)
    assert "EXPTIME" not in hdr
    values, problems = normalise("itelescope_t20", hdr)
    assert problems == []
    assert values["exptime"] == 180.0


def test_itelescope_dark_uses_set_temp_and_gain_fallbacks():
    hdr = header(
        IMAGETYP="Dark Frame",
        EXPTIME=900.0,
        DATE_OBS="2020-04-01T10:00:00",
        XBINNING=2,
        YBINNING=2,
        GAIN=1.39,
        SET_TEMP=-15.0,
    )
    values, problems = normalise("itelescope_t20", hdr)
    assert problems == []
    assert values["imagetype"] == "dark"
    assert values["binning"] == "2x2"
    assert values["gain"] == 1.39
    assert values["temperature"] == -15.0
    assert load_instrument("itelescope_t20").calibration["temperature_tolerance"] == 0.5


# --------------------------------------------------------------------- RATIR
def _ratir_header(**extra):
    cards = dict(
        OBSTYPE="object",
        EXPTIME=80.0,
        SDATE="2014-03-01T04:13:14.250",
        SOFTGAIN=2.0,
        ETRRQRA=150.125,
        ETRRQDE=2.5,
        ETRRQRAO=0.0,
        ETRRQDEO=0.0,
        STRRQAP="rcenter",
        STROBAM=1.21,
        PRPSLID="0.3",
        VSTID=7,
    )
    return header(**{**cards, **extra})


def test_ratir_c2_file_gives_two_chips_z_and_y():
    inst = load_instrument("ratir")
    name = "20140301T041314C2o.fits"
    assert inst.wants_file(name)
    chips = [c for c in inst.chips if c.matches_file(name, fits.Header())]
    assert [c.name for c in chips] == ["C2-Z", "C2-Y"]
    bands = []
    for chip in chips:
        values, problems = inst.normalise(_ratir_header(), chip)
        assert problems == []
        assert values["imagetype"] == "science"
        assert values["exptime"] == 80.0
        assert values["dateobs"] == "2014-03-01T04:13:14.250"
        assert values["gain"] == approx(2.2 / 2.0)  # divided by SOFTGAIN
        assert values["saturation"] == approx(36000 / 2.0)
        assert values["ra"] == 150.125 and values["dec"] == 2.5
        assert values["airmass"] == 1.21
        assert inst.chip_value(chip, "kind") == "nir-ramp"
        bands.append(values["band"])
    assert bands == ["Z", "Y"]
    # the halves are photopipe's numpy slices [rows, columns]
    assert parse_section(chips[0].datasec) == np.s_[4:975, 100:2000]
    assert parse_section(chips[1].datasec) == np.s_[1135:2043, 240:2043]


def test_ratir_c3_halves_j_and_h():
    inst = load_instrument("ratir")
    chips = [c for c in inst.chips if c.matches_file("20140301T041314C3f.fits", fits.Header())]
    assert [(c.name, c.band) for c in chips] == [("C3-J", "J"), ("C3-H", "H")]
    values, problems = inst.normalise(_ratir_header(SOFTGAIN=4.0), chips[1])
    assert problems == []
    assert values["band"] == "H"
    assert values["gain"] == approx(2.4 / 4.0)
    assert parse_section(chips[0].datasec) == np.s_[50:1000, 4:2000]
    assert parse_section(chips[1].datasec) == np.s_[1200:2043, 4:1940]


def test_ratir_ccd_camera():
    inst = load_instrument("ratir")
    chips = [c for c in inst.chips if c.matches_file("20140301T041314C0o.fits", fits.Header())]
    assert [c.name for c in chips] == ["C0"]
    values, problems = inst.normalise(_ratir_header(FILTER="r"), chips[0])
    assert problems == []
    assert values["band"] == "r"
    assert values["gain"] == approx(16.8 / 2.0)
    assert values["saturation"] == approx(65535 / 2.0)
    assert inst.chip_value(chips[0], "kind") == "ccd"
    assert parse_section(chips[0].datasec) == np.s_[0:1023, 125:1023]


def test_ratir_without_softgain_is_a_problem_naming_it():
    hdr = _ratir_header()
    del hdr["SOFTGAIN"]
    _, problems = normalise("ratir", hdr, "C2-Z")
    # the frame is flagged (the undivided chip value stays in the values as a fallback)
    assert problems == [
        "gain: keyword SOFTGAIN (to divide by) is missing or not a number",
        "saturation: keyword SOFTGAIN (to divide by) is missing or not a number",
    ]


# ----------------------------------------------------------------------- LMI
def test_lmi_filter_wheels_and_binning():
    hdr = header(
        OBSTYPE="OBJECT",
        FILTER1="OPEN",
        FILTER2="V",
        EXPTIME=120.0,
        DATE_OBS="2020-01-29T02:16:05.123",
        OBJNAME="SN2020abc",
        OBJECT="SN2020abc",
        RA="05:34:31.94",
        DEC="+22:00:52.2",
        AIRMASS=1.02,
        CCDSUM="2 2",
        GAIN=2.89,
        RDNOISE=6.0,
    )
    values, problems = normalise("lmi", hdr)
    assert problems == []
    assert values["imagetype"] == "science"
    assert values["band"] == "V"
    assert values["exptime"] == 120.0
    assert values["dateobs"] == "2020-01-29T02:16:05.123"
    assert values["binning"] == "2x2"
    assert values["gain"] == 2.89 and values["read_noise"] == 6.0
    assert values["ra"] == approx(83.633083333333)
    assert values["dec"] == approx(22.014500000000)
    assert values["saturation"] == 65000


def test_lmi_dome_flat_filter_in_first_wheel():
    hdr = header(
        OBSTYPE="DOME FLAT",
        FILTER1="SDSS-R",
        FILTER2="OPEN",
        EXPTIME=5.0,
        DATE_OBS="2020-01-29T01:02:35.000",
        CCDSUM="1 1",
    )
    values, problems = normalise("lmi", hdr)
    assert problems == []
    assert values["imagetype"] == "flat"
    assert values["band"] == "SDSS-R"
    assert values["binning"] == "1x1"


def test_lmi_data_slice_is_photopipes_on_2x2_frames():
    inst = load_instrument("lmi")
    chip = inst.chips[0]
    # unbinned FITS section -> at 2x2 the python slice [3:3079, 27:3096]
    assert parse_section(chip.datasec, (2, 2)) == np.s_[3:3079, 27:3096]
    assert inst.wants_file("lmi.0042.fits") and not inst.wants_file("20200129T010235C0f.fits")
    assert inst.pixel_scale == 0.12


# ---------------------------------------------------------------------- IO:I
def _ioi_header(**extra):
    return header(
        {"SEQNUM_R": 1, "SEQNUM_M": 2, "SEQNUM_N": 1},
        OBSTYPE="EXPOSE",
        FILTER1="H",
        INTTIME=11.4,
        ACQTIME=2457081.375,
        ACQTIME1="2015-02-27-21:00:00.000",
        NOUTPUTS=32,
        ASICGAIN=10,
        OBJECT="M 82",
        RA="09:55:52.43",
        DEC="+69:40:46.9",
        AIRMASS=1.3,
        ROTSKYPA=90.0,
        **extra,
    )


def test_ioi_asicgain_maps_to_gain():
    values, problems = normalise("ioi", _ioi_header())
    assert problems == []
    assert values["gain"] == 2.12
    assert values["imagetype"] == "science"
    assert values["band"] == "H"
    assert values["exptime"] == 11.4  # INTTIME, as no EXPTIME is written
    assert values["dateobs"] == "2015-02-27T21:00:00.000"
    assert values["mjd"] == approx(57080.875)
    assert values["binning"] == "1x1"
    assert values["readout_mode"] == "32"
    assert values["read_noise"] == 20.0
    assert values["rotator"] == 90.0
    assert values["read_time"] == 1.4
    assert values["ra"] == approx(148.968458333333)
    assert values["dec"] == approx(69.679694444444)


@pytest.mark.parametrize(("setting", "gain"), [(8, 3.05), (12, 1.5), (13, 1.06)])
def test_ioi_other_asic_gains(setting, gain):
    hdr = _ioi_header(EXPTIME=10.0)
    hdr["ASICGAIN"] = setting
    values, problems = normalise("ioi", hdr)
    assert problems == []
    assert values["gain"] == gain
    assert values["exptime"] == 10.0


def test_ioi_unknown_asic_gain_is_a_problem():
    hdr = _ioi_header()
    hdr["ASICGAIN"] = 9
    values, problems = normalise("ioi", hdr)
    assert values["gain"] is None
    assert problems == [
        "gain: ASICGAIN=9 is not in the instrument's gain map "
        "(add it under header.gain.map in the instrument file)"
    ]


def test_ioi_reference_pixel_crop():
    inst = load_instrument("ioi")
    chip = inst.chips[0]
    assert parse_section(chip.trimsec) == np.s_[4:2044, 4:2044]
    assert inst.detector["reference_pixels"] == 4 and inst.detector["outputs"] == 32
    assert inst.chip_value(chip, "kind") == "nir-fowler"
