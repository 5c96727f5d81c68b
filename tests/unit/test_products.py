"""Image products: layout, checksums that verify, and the same bytes for the same content."""

from __future__ import annotations

import hashlib
import time
import warnings

import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData
from imred.mask import Bit
from imred.products import write_image_product


def test_products_verify_read_as_ccddata_and_repeat_byte_for_byte(tmp_path):
    primary = fits.Header({"IMRTYPE": "CALIBRATED"})
    primary["CHECKSUM"] = ("stale", "copied from an input")  # must not survive
    sci = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = np.zeros((3, 4), np.uint16)
    mask[1, 2] = Bit.COSMIC_RAY
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"p{i}.fits")
        write_image_product(paths[-1], primary, sci, var=sci + 1, mask=mask, unit="electron")
        time.sleep(1.1)  # astropy's checksum comment would carry the time
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(digests) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(paths[0], checksum=True) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "SCI", "VAR", "MASK"]
            assert hdul[0].header["CHECKSUM"] != "stale"
            assert hdul["MASK"].header["MASKB5"] == "COSMIC_RAY"
    ccd = CCDData.read(paths[0], hdu="SCI", hdu_uncertainty="VAR", hdu_mask="MASK")
    assert ccd.unit == "electron"
    assert np.allclose(ccd.uncertainty.array, sci + 1)
    assert ccd.mask[1, 2] and ccd.mask.sum() == 1
