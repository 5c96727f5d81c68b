"""Config and instrument-file validation: errors name the key and what is allowed."""

from __future__ import annotations

import pytest
import yaml
from imred.config import load_config, settings_hash
from imred.errors import ImredError
from imred.instrument import load_instrument
from imred.schema import read_yaml
from imred.sections import parse_section, section_shape

from conftest import ROOT

GOOD = {"instruments": {"demo": {"raw": ["data/demo/raw"]}}}


def test_demo_config_is_valid_and_gets_defaults():
    cfg = load_config(read_yaml(ROOT / "config/config.yaml", "config file"), "config.yaml")
    assert cfg["instruments"]["demo"]["raw"] == ["data/demo/raw"]
    minimal = load_config(GOOD)
    assert minimal["inspect"] == {"clip_sigma": 3.0, "saturated_fraction_warn": 0.001}
    assert minimal["instruments"]["demo"]["nights"] == []


def test_typo_in_a_key_is_an_error_naming_it_and_the_allowed_keys():
    with pytest.raises(ImredError) as err:
        load_config({**GOOD, "inspekt": {}}, "my.yaml")
    msg = str(err.value)
    assert msg.startswith("my.yaml: unknown key 'inspekt' (did you mean 'inspect'?)")
    assert "allowed keys: astrometry, background, calibration, coadd, detection, inspect," in msg
    with pytest.raises(ImredError, match=r"unknown key 'clip_sigam' .*in 'inspect'"):
        load_config({**GOOD, "inspect": {"clip_sigam": 3}})


def test_wrong_type_and_range_are_errors_naming_the_key():
    with pytest.raises(ImredError, match=r"'inspect.clip_sigma' is 'three'; it must be of type"):
        load_config({**GOOD, "inspect": {"clip_sigma": "three"}})
    with pytest.raises(ImredError, match=r"'inspect.saturated_fraction_warn': 2 is greater"):
        load_config({**GOOD, "inspect": {"saturated_fraction_warn": 2}})
    with pytest.raises(ImredError, match=r"'instruments.demo' lacks the required key 'raw'"):
        load_config({"instruments": {"demo": {}}})


def test_settings_hash_is_stable_and_sensitive():
    a = settings_hash({"x": 1, "y": [1, 2]})
    assert a == settings_hash({"y": [1, 2], "x": 1})  # key order does not matter
    assert a != settings_hash({"x": 2, "y": [1, 2]})
    assert len(a) == 16


def test_instrument_file_errors_name_the_file_and_key(tmp_path):
    doc = read_yaml(ROOT / "config/instruments/demo.yaml", "instrument file")
    doc["detector"]["kind"] = "cmos"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ImredError) as err:
        load_instrument(bad)
    msg = str(err.value)
    assert str(bad) in msg
    assert "'detector.kind' is 'cmos'; allowed values: ccd, nir-cds, nir-fowler, nir-ramp" in msg
    doc["detector"]["kind"] = "ccd"
    doc["chips"][0]["datsec"] = "[1:10,1:10]"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ImredError, match=r"unknown key 'datsec' \(did you mean 'datasec'\?\)"):
        load_instrument(bad)
    doc["chips"][0].pop("datsec")
    doc["header"]["imagetype"]["map"]["weird"] = "lamp"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ImredError, match="maps to lamp; allowed image types: bias, dark"):
        load_instrument(bad)


def test_unknown_instrument_lists_the_known_ones():
    with pytest.raises(ImredError, match=r"unknown instrument 'nosuch'.*known instruments: .*demo"):
        load_instrument("nosuch")


def test_sections_are_fits_one_based_inclusive():
    rows, cols = parse_section("[1:1024,11:20]")
    assert (rows, cols) == (slice(10, 20), slice(0, 1024))
    assert section_shape("[1029:1056,1:1024]") == (1024, 28)
    # binned 2x2: an unbinned section covers the binned pixels it overlaps
    assert parse_section("[1:1024,1:1024]", (2, 2)) == (slice(0, 512), slice(0, 512))
    with pytest.raises(ImredError, match="1-based"):
        parse_section("[0:10,1:10]")
    with pytest.raises(ImredError, match="not of the form"):
        parse_section("1:10,1:10")
