"""The bitmask of calibrated frames: one place that names every bit.

A calibrated frame's ``MASK`` extension is ``uint16``; a pixel is good when its value
is 0. Bits (value = 2**bit):

=====  ==========  =====================================================================
value  name        meaning
=====  ==========  =====================================================================
1      BAD         bad for any static reason (bad column, user region, instrument mask)
2      HOT         hot pixel (high dark current, from the master dark)
4      DEAD        dead or low-response pixel (from the master flat)
8      SATURATED   at or above the detector's saturation level in the raw frame
16     NONLINEAR   beyond the range where the non-linearity correction is valid
32     COSMIC_RAY  cosmic-ray hit (L.A.Cosmic / astroscrappy)
64     NO_DATA     no data: outside the illuminated area, a gap, or not finite
128    PERSISTENCE NIR persistence from an earlier saturated exposure
256    INTERPOLATED value repaired by interpolation from good neighbours (still usable)
=====  ==========  =====================================================================

The header of every MASK extension lists the bits as ``MASKB{n}`` keywords, so the
file says what its bits mean. ``UNUSABLE`` are the bits that keep a pixel out of
photometry and coadds.
"""

from __future__ import annotations

from enum import IntFlag

import numpy as np
from astropy.io import fits


class Bit(IntFlag):
    BAD = 1
    HOT = 2
    DEAD = 4
    SATURATED = 8
    NONLINEAR = 16
    COSMIC_RAY = 32
    NO_DATA = 64
    PERSISTENCE = 128
    INTERPOLATED = 256


UNUSABLE = (
    Bit.BAD | Bit.HOT | Bit.DEAD | Bit.SATURATED | Bit.NONLINEAR | Bit.COSMIC_RAY | Bit.NO_DATA
    | Bit.PERSISTENCE
)  # fmt: skip

MASK_DTYPE = np.uint16


def describe(header: fits.Header) -> None:
    """Write the meaning of every bit into a MASK extension's header."""
    for bit in Bit:
        header[f"MASKB{int(bit).bit_length() - 1}"] = (bit.name, f"mask value {int(bit)}")
    header["MASKGOOD"] = (0, "value of a good pixel")


def usable(mask: np.ndarray) -> np.ndarray:
    """True where a pixel can be used (no bit of :data:`UNUSABLE` set)."""
    return (mask & int(UNUSABLE)) == 0
