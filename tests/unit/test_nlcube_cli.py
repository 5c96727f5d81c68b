"""`imred nonlinearity-cube`: from an up-the-ramp series on disk to a cube that linearises."""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from imred.cli import main
from imred.nir import correct_nonlinearity


def test_cube_from_ramp_files_linearises_the_reads(tmp_path, capsys):
    rng = np.random.default_rng(3)
    rate = rng.uniform(600, 1200, (16, 16))  # ADU/s
    k = 8e-7  # observed = true - k true^2 (3 % low at 40000 ADU)
    times = 1.4 * np.arange(1, 41)
    paths = []
    for i in rng.permutation(len(times)):  # files in any order: sorted by INTTIME
        true = rate * times[i]
        obs = true - k * true**2
        p = tmp_path / f"read{i:02d}.fits"
        hdu = fits.PrimaryHDU(obs.astype(np.float32))
        hdu.header["INTTIME"] = times[i]
        hdu.writeto(p)
        paths.append(str(p))
    out = tmp_path / "cube.fits"
    assert main(["nonlinearity-cube", *paths, "--out", str(out), "--linear-max", "8000"]) == 0
    assert "wrote" in capsys.readouterr().out
    cube = fits.getdata(out)
    # a level of 30000 true ADU, observed low by k*30000^2, is restored within 0.1 %
    true = np.full((16, 16), 30000.0)
    obs = (true - k * true**2).astype(np.float32)
    corrected, _ = correct_nonlinearity(obs, cube=cube)
    assert np.abs(corrected / true - 1).max() < 1e-3
    assert (obs / true - 1).min() < -0.02  # what it corrected was a 2.4 % effect
    assert fits.getdata(out, "BAD").sum() == 0
