"""Reading raw chips and writing products (FITS I/O shared by the stages)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from .errors import ImredError

# Keywords that describe one HDU's structure: not carried into a chip's merged header.
STRUCTURAL_KEYWORDS = frozenset(
    "SIMPLE XTENSION EXTEND BITPIX NAXIS NAXIS1 NAXIS2 NAXIS3 PCOUNT GCOUNT BZERO BSCALE "
    "EXTNAME COMMENT HISTORY".split()
) | {""}


def merged_header(primary: fits.Header, ext: fits.Header) -> fits.Header:
    """A chip's header as the instrument file sees it: the primary's cards, then the
    extension's (which win), without structural keywords."""
    merged = fits.Header()
    for header in (primary, ext):
        for card in header.cards:
            if card.keyword not in STRUCTURAL_KEYWORDS:
                merged[card.keyword] = card.value
    return merged


def image_hdu(hdul: fits.HDUList, extension: int | str):
    """The HDU holding a chip, or None; a compressed (fpack) primary image lives in extension 1."""
    try:
        hdu = hdul[extension]
    except (KeyError, IndexError):
        return None
    compressed_primary = len(hdul) > 1 and isinstance(hdul[1], fits.CompImageHDU)
    if extension == 0 and not hdu.header.get("NAXIS") and compressed_primary:
        return hdul[1]
    return hdu


def parse_extension(text: str | int) -> int | str:
    """An extension as written in the observation log: an index or an EXTNAME."""
    text = str(text)
    return int(text) if text.lstrip("-").isdigit() else text


def read_chip(path: str | Path, extension: int | str) -> tuple[np.ndarray, fits.Header]:
    """The raw pixels (float32, BZERO/BSCALE applied) and header of one chip."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(path, memmap=False) as hdul:
                hdu = image_hdu(hdul, parse_extension(extension))
                if hdu is None or hdu.data is None:
                    raise ImredError(f"{path}: extension {extension} holds no image")
                return np.asarray(hdu.data, dtype=np.float32), hdu.header.copy()
    except OSError as err:
        raise ImredError(f"cannot read {path}: {err}") from None


def write_atomic(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename to ``path``: a product is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        stale.unlink(missing_ok=True)  # left by a killed job that wrote this product
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
