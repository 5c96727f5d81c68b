"""Library code hashes: an edit changes the hash of the code that uses it, and only that."""

from __future__ import annotations

import shutil

import imred.codehash as ch

from conftest import ROOT


def test_hash_follows_imports_transitively(tmp_path, monkeypatch):
    pkg = tmp_path / "imred"
    shutil.copytree(ROOT / "scripts/imred", pkg)
    monkeypatch.setattr(ch, "PACKAGE_DIR", pkg)
    ch.code_hash.cache_clear()
    before = {m: ch.code_hash(m) for m in ("imred.masters", "imred.inspect", "imred.obslog")}
    # combine is used by calib, which masters uses; inspect and obslog do not use it
    (pkg / "combine.py").write_text((pkg / "combine.py").read_text() + "\n# an edit\n")
    ch.code_hash.cache_clear()
    after = {m: ch.code_hash(m) for m in before}
    assert after["imred.masters"] != before["imred.masters"]
    assert after["imred.inspect"] == before["imred.inspect"]
    assert after["imred.obslog"] == before["imred.obslog"]
    ch.code_hash.cache_clear()
