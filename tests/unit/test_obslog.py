"""Observation log: normalised rows, bad files listed with reasons, user edits kept."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from imred.errors import ImredError
from imred.instrument import load_instrument, night_of
from imred.obslog import COLUMNS, read_obslog, update_obslog

from conftest import CAFOS, write_demo_frame


@pytest.fixture
def demo():
    return load_instrument("demo")


def by(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def test_rows_are_normalised_per_frame_and_chip(tmp_path, demo):
    raw = tmp_path / "raw"
    write_demo_frame(raw / "sci_001.fits", band="SDSS r", exptime=120.0)
    write_demo_frame(raw / "sub" / "bias_001.fits", imagetype="ZERO", band=None, exptime=0.0)
    log = tmp_path / "obslog.tsv"
    rows, stats = update_obslog(demo, [raw], log)
    assert stats == {"read": 2, "kept": 0, "removed": 0}
    assert len(rows) == 4  # 2 files x 2 chips, the sub-folder found recursively
    sci = by(rows, frame="sci_001")
    assert [r["chip"] for r in sci] == ["c1", "c2"]
    assert [r["extension"] for r in sci] == ["CCD1", "CCD2"]
    assert [r["gain"] for r in sci] == [1.5, 1.6]  # from each extension's own header
    r = sci[0]
    assert (r["imagetype"], r["band"], r["exptime"], r["binning"]) == ("science", "r", 120.0, "1x1")
    assert r["dateobs"] == "2026-03-02T04:00:00.000"
    assert r["night"] == "20260301"  # 04:00 UTC is the evening of the 1st at Kitt Peak
    assert r["ra"] == pytest.approx(150.0) and r["dec"] == pytest.approx(20.0)
    # no AIRMASS keyword: computed from site, time and pointing
    assert 1.0 <= float(r["airmass"]) < 3.0
    assert (r["use"], r["reason"]) == ("yes", "")
    bias = by(rows, frame="bias_001")[0]
    assert (bias["imagetype"], bias["band"]) == ("bias", None)
    # the file on disk has every column, in order
    disk, inst_hash = read_obslog(log)
    assert inst_hash == demo.hash
    assert list(disk[0]) == COLUMNS
    assert [d["frame"] for d in disk] == [r["frame"] for r in rows]


def test_bad_files_are_listed_with_reasons_and_the_log_is_written(tmp_path, demo):
    raw = tmp_path / "raw"
    write_demo_frame(raw / "good.fits")
    (raw / "notfits.fits").write_text("this is not a FITS file\n" * 200)
    (raw / "empty.fits").write_bytes(b"")
    trunc = write_demo_frame(raw / "trunc.fits", shape=(200, 200))
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size - 5000])
    write_demo_frame(raw / "noexp.fits", exptime=None)
    write_demo_frame(raw / "weird.fits", imagetype="PINHOLE")
    write_demo_frame(raw / "onechip.fits", chips=("CCD1",))
    write_demo_frame(raw / "focus.fits", imagetype="FOCUS")
    log = tmp_path / "obslog.tsv"
    rows, _ = update_obslog(demo, [raw], log)
    assert log.exists()
    reason = {(r["frame"], r.get("chip")): (r["use"], r["reason"]) for r in rows}
    assert reason[("good", "c1")] == ("yes", "")
    assert reason[("notfits", None)][1].startswith("not FITS:")
    assert reason[("empty", None)][1].startswith("empty:")
    assert reason[("trunc", None)][1].startswith("truncated:")
    use, why = reason[("noexp", "c1")]
    assert use == "no" and "EXPTIME" in why and "missing" in why
    use, why = reason[("weird", "c1")]
    assert use == "no" and "'PINHOLE'" in why and "header.imagetype.map" in why
    assert reason[("onechip", "c1")] == ("yes", "")
    assert reason[("onechip", "c2")][1] == "missing extension: CCD2 (chip c2)"
    assert reason[("focus", "c1")] == ("no", "not reduced: image type focus")
    assert sum(r["use"] == "yes" for r in rows) == 3  # good x 2 chips, onechip c1


def test_user_edits_of_use_survive_updates(tmp_path, demo):
    raw = tmp_path / "raw"
    a = write_demo_frame(raw / "a.fits")
    write_demo_frame(raw / "b.fits")
    write_demo_frame(raw / "f.fits", imagetype="FOCUS")
    log = tmp_path / "obslog.tsv"
    update_obslog(demo, [raw], log)
    text = log.read_text().splitlines()
    edited = []
    for line in text:
        cols = line.split("\t")
        if not line.startswith("#") and cols[0] == "a" and cols[4] == "c1":
            cols[COLUMNS.index("use")] = "no"
            cols[COLUMNS.index("reason")] = "clouds"
        if not line.startswith("#") and cols[0] == "f" and cols[4] == "c1":
            cols[COLUMNS.index("use")] = "yes"  # take back a frame imred excluded
        edited.append("\t".join(cols))
    log.write_text("\n".join(edited) + "\n")
    # the raw file changes (re-read) and a new one arrives
    os.utime(a, (a.stat().st_atime, a.stat().st_mtime + 10))
    write_demo_frame(raw / "c.fits")
    rows, stats = update_obslog(demo, [raw], log)
    assert stats["read"] == 2 and stats["kept"] == 2
    got = {(r["frame"], r["chip"]): (r["use"], r["reason"]) for r in rows}
    assert got[("a", "c1")] == ("no", "clouds")
    assert got[("a", "c2")] == ("yes", "")
    assert got[("f", "c1")] == ("yes", "not reduced: image type focus")
    assert got[("c", "c1")] == ("yes", "")
    # the edits are on disk too, and a further update with nothing new reads nothing
    rows2, stats2 = update_obslog(demo, [raw], log)
    assert stats2 == {"read": 0, "kept": 4, "removed": 0}
    assert {(r["frame"], r["chip"]): (r["use"], r["reason"]) for r in rows2} == got


def test_update_is_incremental_and_notices_removed_files(tmp_path, demo):
    raw = tmp_path / "raw"
    write_demo_frame(raw / "a.fits")
    b = write_demo_frame(raw / "b.fits")
    log = tmp_path / "obslog.tsv"
    update_obslog(demo, [raw], log)
    mtime = log.stat().st_mtime_ns
    _, stats = update_obslog(demo, [raw], log)
    assert stats == {"read": 0, "kept": 2, "removed": 0}
    assert log.stat().st_mtime_ns == mtime  # nothing changed: not rewritten
    b.unlink()
    rows, stats = update_obslog(demo, [raw], log)
    assert stats == {"read": 0, "kept": 1, "removed": 1}
    assert {r["frame"] for r in rows} == {"a"}


def test_raw_files_are_never_modified(tmp_path, demo):
    raw = tmp_path / "raw"
    files = [write_demo_frame(raw / f"s{i}.fits") for i in range(3)]
    before = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    stamps = {f: f.stat().st_mtime_ns for f in files}
    update_obslog(demo, [raw], tmp_path / "log.tsv")
    assert {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files} == before
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


def test_repeated_file_names_in_one_night_get_unique_ids(tmp_path, demo):
    raw = tmp_path / "raw"
    write_demo_frame(raw / "x" / "img.fits")
    write_demo_frame(raw / "y" / "img.fits")
    write_demo_frame(raw / "z" / "img.fits", dateobs="2026-03-05T04:00:00")  # another night
    rows, _ = update_obslog(demo, [raw], tmp_path / "log.tsv")
    ids = sorted({(r["night"], r["frame"]) for r in rows})
    assert ids == [("20260301", "img"), ("20260301", "img-2"), ("20260304", "img")]


def test_night_starts_at_local_noon():
    # Kitt Peak, 111.6 deg W: local mean noon is 19:26 UTC
    mjd = [61101.80, 61101.82, 61101.0 + 4 / 24]  # 2026-03-02 19:12, 19:41, 04:00 UTC
    assert night_of(mjd, -111.5967) == ["20260301", "20260302", "20260301"]
    assert night_of([np.nan], 0.0) == [None]


def test_bad_use_value_and_missing_folder_are_clear_errors(tmp_path, demo):
    raw = tmp_path / "raw"
    write_demo_frame(raw / "a.fits")
    log = tmp_path / "log.tsv"
    update_obslog(demo, [raw], log)
    log.write_text(log.read_text().replace("\tyes\t", "\tmaybe\t", 1))
    with pytest.raises(ImredError, match=r"line 4 \(frame a\): use = 'maybe'; write yes or no"):
        read_obslog(log)
    with pytest.raises(ImredError, match=r"raw folder .*nowhere' does not exist"):
        update_obslog(demo, [tmp_path / "nowhere"], log)


@pytest.mark.skipif(not CAFOS.is_dir(), reason=f"real CAFOS data not found at {CAFOS}")
def test_real_cafos_night(tmp_path):
    cafos = load_instrument("cafos")
    rows, _ = update_obslog(cafos, [CAFOS / "raw"], tmp_path / "log.tsv")
    assert len(rows) == 15
    assert all(r["use"] == "yes" for r in rows), [r["reason"] for r in rows]
    kinds = {}
    for r in rows:
        kinds.setdefault((r["night"], r["imagetype"], r["band"]), []).append(r["frame"])
    assert {k: len(v) for k, v in kinds.items()} == {
        ("20210318", "bias", None): 2,
        ("20210318", "flat", "B"): 1,
        ("20210318", "flat", "V"): 1,
        ("20210328", "science", "B"): 6,
        ("20210328", "science", "V"): 5,
    }
    sci = by(rows, imagetype="science")
    assert sorted({r["exptime"] for r in sci}) == [2.0, 3.0, 60.0]
    # apparent-of-date pointing converted to ICRS: within a few arcmin of NGC 2420
    for r in sci:
        assert abs(r["ra"] - 114.602) * np.cos(np.radians(21.575)) < 0.1
        assert abs(r["dec"] - 21.575) < 0.1
        assert r["gain"] == 1.43 and r["read_noise"] == 7.4
