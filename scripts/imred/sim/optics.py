"""Focal plane, true WCS and PSF of the simulator.

Conventions
-----------
* Chip images are ``(ny, nx)`` on the chip's data section (``datasec``); pixel
  positions are 0-based (numpy: the centre of pixel ``[j, i]`` is ``x = i, y = j``);
  FITS ``CRPIX`` is 1-based.
* Sky offsets ``(xi, eta)`` are gnomonic (TAN) coordinates about the optical axis,
  ``xi`` towards east, ``eta`` towards north.
* The camera's position angle PA (instrument file ``rotator``) is the angle from north
  to the chip's +y axis, through east; by default east is to the left (x grows towards
  west). ``geometry.offset_arcsec`` of a chip is the undistorted (east, north) offset of
  its reference pixel from the optical axis at rotator angle 0; ``rotation_deg`` turns
  the chip counter-clockwise in its own pixel frame; ``flip_x``/``flip_y`` mirror it.
* Distortion is radial about the optical axis: an undistorted pixel offset ``r`` from
  the axis lands at ``r (1 + k r^2)``. Each chip's TAN-SIP WCS has ``CRPIX`` at the
  optical axis (outside the chip), ``CRVAL`` the true pointing, and exact forward SIP
  terms ``A_3_0 = A_1_2 = B_0_3 = B_2_1 = k`` (inverse AP/BP to 5th order).
* On-chip binning ``(bx, by)`` (scenario ``observing.binning``): the simulator renders
  every image on the unbinned grid of :class:`ChipLayout` and sums it into the binned
  grid of :func:`binned_layout`. Binned pixel ``X`` (0-based) covers unbinned pixels
  ``bx X .. bx X + bx - 1``, so ``X = (x + 0.5) / bx - 0.5``; a :class:`ChipWCS` with
  ``binning`` gives positions and writes its header (CRPIX, CD, SIP) on the binned grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from astropy.io import fits

from ..errors import ImredError
from ..sections import format_section, parse_section


@dataclass
class Amp:
    """One amplifier: raw-array slices of its data and overscan, gain, read noise."""

    name: str
    data: tuple[slice, slice]
    overscan: tuple[slice, slice] | None
    axis: str
    gain: float
    read_noise: float


@dataclass
class ChipLayout:
    """Everything the simulator needs to know about one chip."""

    name: str
    index: int
    extension: int | str
    raw_shape: tuple[int, int]
    datasec: tuple[slice, slice]
    amps: list[Amp]
    gain: float
    read_noise: float
    saturation: float
    pixel_scale: float
    crpix: np.ndarray  # (2,) 1-based pixel of the optical axis on the data grid
    cd0: np.ndarray  # (2, 2) arcsec per pixel at PA = 0 (without the rotator term)
    k_distortion: float = 0.0  # per pixel^2
    kind: str = "ccd"  # detector kind of the chip (instrument file: chip kind or detector kind)
    band: str | None = None  # fixed band (split arrays behind their own filters), else None
    select: dict = field(default_factory=dict)  # which file carries the chip (file per chip)
    data_shape: tuple[int, int] = field(init=False)

    def __post_init__(self):
        rows, cols = self.datasec
        self.data_shape = (rows.stop - rows.start, cols.stop - cols.start)

    def focal_plane(self) -> tuple[np.ndarray, np.ndarray]:
        """Undistorted offsets (arcsec, at PA 0: east, north) of every data pixel from the axis."""
        ny, nx = self.data_shape
        u = np.arange(nx, dtype=np.float64) + 1.0 - self.crpix[0]
        v = np.arange(ny, dtype=np.float64) + 1.0 - self.crpix[1]
        uu, vv = np.meshgrid(u, v)
        east = self.cd0[0, 0] * uu + self.cd0[0, 1] * vv
        north = self.cd0[1, 0] * uu + self.cd0[1, 1] * vv
        return east, north


def sky_rotation(theta_deg: float) -> np.ndarray:
    """The sky rotation that turns north (0, 1) into the direction of PA ``theta``."""
    t = np.radians(theta_deg)
    return np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])


def _pixel_matrix(scale: float, rotator: dict, geometry: dict) -> np.ndarray:
    """arcsec per pixel (east, north) <- (dx, dy) at PA 0."""
    m = np.array([[-scale, 0.0], [0.0, scale]])
    if rotator.get("flip_x"):
        m = m @ np.diag([-1.0, 1.0])
    phi = np.radians(geometry.get("rotation_deg", 0.0) or 0.0)
    rot = np.array([[np.cos(phi), -np.sin(phi)], [np.sin(phi), np.cos(phi)]])
    flip = np.diag(
        [-1.0 if geometry.get("flip_x") else 1.0, -1.0 if geometry.get("flip_y") else 1.0]
    )
    return m @ rot @ flip


def chip_layouts(
    instrument,
    *,
    gain_enabled: bool,
    distortion_arcsec_at_600: float,
    chip_size: tuple[int, int] | list | None = None,
    only: list[str] | None = None,
    fallback: dict | None = None,
) -> list:
    """Lay out the instrument's chips (raw shapes, amplifiers, focal-plane geometry).

    Parameters
    ----------
    instrument : Instrument
    gain_enabled : bool
        Gains from the instrument file (else 1 e-/ADU).
    distortion_arcsec_at_600 : float
        Radial distortion: displacement (arcsec) at 600 arcsec from the optical axis.
    chip_size : (nx, ny), optional
        Raw size of chips whose instrument file gives no ``datasec`` (the whole array is
        data); such a chip is an error without it.
    only : list of str, optional
        Simulate only these chips (names from the instrument file); default all.
    fallback : dict, optional
        ``gain``, ``read_noise`` for chips whose instrument file gives none (a camera
        writing them to the header); None values do not count.

    Chips that share a raw array (the same file and extension: a split detector behind
    two filters) get the same ``raw_shape``; their data sections must not overlap.
    """
    layouts = []
    rotator = instrument.rotator or {}
    names = [c.name for c in instrument.chips]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise ImredError(
            f"scenario: camera.chips names {', '.join(unknown)}, not chips of "
            f"{instrument.source} (its chips: {', '.join(names)})"
        )
    selected = [c.select for c in instrument.chips if not only or c.name in only]
    if any(selected) and not all(selected):
        raise ImredError(
            f"{instrument.source}: some chips have 'select' (a file per chip) and others not; "
            "the simulator needs either every chip or none to say which file carries it"
        )
    for index, chip in enumerate(instrument.chips):
        if only and chip.name not in only:
            continue
        scale = instrument.chip_value(chip, "pixel_scale")
        gain = instrument.chip_value(chip, "gain")
        read_noise = instrument.chip_value(chip, "read_noise")
        if gain is None:
            gain = (fallback or {}).get("gain")
        if read_noise is None:
            read_noise = (fallback or {}).get("read_noise")
        saturation = instrument.chip_value(chip, "saturation")
        missing = [
            name
            for name, v in (
                ("pixel_scale", scale),
                ("gain", gain),
                ("read_noise", read_noise),
                ("saturation", saturation),
            )
            if v is None
        ]
        if missing:
            raise ImredError(
                f"{instrument.source}: chip {chip.name} has no {', '.join(missing)}; the simulator "
                "needs them (set them on the chip or under detector/pixel_scale; gain and "
                "read_noise may also be given in the scenario as camera.gain, camera.read_noise)"
            )
        if chip.datasec:
            datasec = parse_section(chip.datasec)
        elif chip_size:
            datasec = (slice(0, int(chip_size[1])), slice(0, int(chip_size[0])))
        else:
            raise ImredError(
                f"{instrument.source}: chip {chip.name} has no datasec, so the simulator does not "
                "know its size; give it in the scenario as camera.chip_size: [nx, ny]"
            )
        sections = [datasec]
        amps = []
        whole = format_section(*datasec)
        for a_index, amp in enumerate(chip.amplifiers or [{"data": whole}]):
            data = parse_section(amp["data"])
            over = parse_section(amp["overscan"]) if amp.get("overscan") else None
            sections += [data] + ([over] if over else [])
            a_gain = amp.get("gain", gain) if gain_enabled else 1.0
            amps.append(
                Amp(
                    name=str(amp.get("name", a_index)),
                    data=data,
                    overscan=over,
                    axis=amp.get("readout_axis", "x"),
                    gain=float(a_gain),
                    read_noise=float(amp.get("read_noise", read_noise)),
                )
            )
        raw_shape = (max(s[0].stop for s in sections), max(s[1].stop for s in sections))
        geometry = chip.geometry or {}
        cd0 = _pixel_matrix(float(scale), rotator, geometry)
        rows, cols = datasec
        trim = parse_section(chip.trimsec) if chip.trimsec else datasec
        if "reference_pixel" in geometry:
            ref = np.array(geometry["reference_pixel"], dtype=float)
        else:
            ref = np.array(
                [(trim[1].stop - trim[1].start + 1) / 2.0, (trim[0].stop - trim[0].start + 1) / 2.0]
            )
        ref = ref + np.array([trim[1].start - cols.start, trim[0].start - rows.start])
        offset = np.array(geometry.get("offset_arcsec", [0.0, 0.0]), dtype=float)
        # offset is the (east, north) offset at rotator 0, i.e. at PA = rotator offset_deg;
        # CRPIX (the optical axis) is then the same at every PA
        pa0 = float(rotator.get("offset_deg", 0.0) or 0.0)
        crpix = ref - np.linalg.solve(sky_rotation(pa0) @ cd0, offset)
        r_px = 600.0 / float(scale)
        k = (distortion_arcsec_at_600 / float(scale)) / r_px**3
        layouts.append(
            ChipLayout(
                name=chip.name,
                index=index,
                extension=chip.extension,
                raw_shape=raw_shape,
                datasec=datasec,
                amps=amps,
                gain=float(gain) if gain_enabled else 1.0,
                read_noise=float(read_noise),
                saturation=float(saturation),
                pixel_scale=float(scale),
                crpix=crpix,
                cd0=cd0,
                k_distortion=k,
                kind=str(instrument.chip_value(chip, "kind") or "ccd"),
                band=chip.band,
                select=dict(chip.select or {}),
            )
        )
    _share_raw_arrays(layouts, instrument.source)
    return layouts


def _binned_slice(sl: slice, b: int, what: str) -> slice:
    if sl.start % b or sl.stop % b:
        raise ImredError(what)
    return slice(sl.start // b, sl.stop // b)


def binned_layout(layout: ChipLayout, binning: tuple[int, int], source: str = "") -> ChipLayout:
    """The chip as it is read out binned ``(bx, by)``: every section divided.

    The sections (raw array, data, amplifiers' data and overscan) must start and end on
    binned-pixel boundaries (as :func:`imred.sections.parse_section` with ``binning``
    then reads them back exactly); anything else is an :class:`ImredError`. The
    geometry (``crpix``, ``cd0``, ``pixel_scale``, ``k_distortion``) stays the unbinned
    chip's: the true WCS is ``chip_wcs(unbinned layout, ..., binning)``. Only the read-out
    and the raw file use the binned layout.
    """
    bx, by = (int(v) for v in binning)
    if (bx, by) == (1, 1):
        return layout

    def cut(sec: tuple[slice, slice], name: str) -> tuple[slice, slice]:
        rows, cols = sec
        why = (
            f"{source or 'instrument file'}: chip {layout.name}: the {name} "
            f"{format_section(rows, cols)} does not fall on {bx}x{by} binned-pixel boundaries "
            f"(its first pixel - 1 and its last pixel must be multiples of the binning); "
            "the simulator cannot bin it"
        )
        return _binned_slice(rows, by, why), _binned_slice(cols, bx, why)

    ny, nx = layout.raw_shape
    full = cut((slice(0, ny), slice(0, nx)), "raw array")
    amps = [
        Amp(
            name=a.name,
            data=cut(a.data, f"data section of amplifier {a.name}"),
            overscan=cut(a.overscan, f"overscan of amplifier {a.name}") if a.overscan else None,
            axis=a.axis,
            gain=a.gain,
            read_noise=a.read_noise,
        )
        for a in layout.amps
    ]
    return replace(
        layout,
        raw_shape=(full[0].stop, full[1].stop),
        datasec=cut(layout.datasec, "data section"),
        amps=amps,
    )


def bin_sum(image: np.ndarray, binning: tuple[int, int]) -> np.ndarray:
    """Sum ``image`` (ny, nx) over blocks of ``by`` rows x ``bx`` columns (exact multiples)."""
    bx, by = binning
    if (bx, by) == (1, 1):
        return image
    ny, nx = image.shape
    return image.reshape(ny // by, by, nx // bx, bx).sum(axis=(1, 3))


def bin_mean(image: np.ndarray, binning: tuple[int, int]) -> np.ndarray:
    """Mean of ``image`` over binned-pixel blocks (dtype kept)."""
    bx, by = binning
    if (bx, by) == (1, 1):
        return image
    out = bin_sum(image.astype(np.float64), binning) / (bx * by)
    return out.astype(image.dtype)


def to_binned(x, y, binning: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """0-based binned positions of 0-based unbinned ones (see the module docstring)."""
    bx, by = binning
    if (bx, by) == (1, 1):
        return x, y
    return (np.asarray(x) + 0.5) / bx - 0.5, (np.asarray(y) + 0.5) / by - 0.5


def raw_array_key(layout: ChipLayout) -> tuple[str, str]:
    """Which raw array holds a chip: (file selection, extension) - equal for split halves."""
    return repr(sorted(layout.select.items())), str(layout.extension)


def _share_raw_arrays(layouts: list, source: str) -> None:
    """Give chips sharing a raw array its full shape; refuse overlapping data sections."""
    groups: dict[tuple[str, str], list] = {}
    for lay in layouts:
        groups.setdefault(raw_array_key(lay), []).append(lay)
    for members in groups.values():
        if len(members) < 2:
            continue
        shape = (max(m.raw_shape[0] for m in members), max(m.raw_shape[1] for m in members))
        for i, a in enumerate(members):
            a.raw_shape = shape
            for b in members[i + 1 :]:
                (ra, ca), (rb, cb) = a.datasec, b.datasec
                if (
                    ra.start < rb.stop
                    and rb.start < ra.stop
                    and ca.start < cb.stop
                    and cb.start < ca.stop
                ):
                    raise ImredError(
                        f"{source}: chips {a.name} and {b.name} share extension {a.extension} "
                        "and their data sections overlap; a split detector's halves must not"
                    )


# ------------------------------------------------------------------ projections
def sky_to_tan(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic offsets (arcsec; xi east, eta north) of (ra, dec) about (ra0, dec0), degrees."""
    ra = np.radians(np.asarray(ra, dtype=float))
    dec = np.radians(np.asarray(dec, dtype=float))
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosd = np.cos(dec)
    dra = ra - a0
    den = np.sin(dec) * np.sin(d0) + cosd * np.cos(d0) * np.cos(dra)
    xi = cosd * np.sin(dra) / den
    eta = (np.sin(dec) * np.cos(d0) - cosd * np.sin(d0) * np.cos(dra)) / den
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


def tan_to_sky(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`sky_to_tan`: (ra, dec) in degrees from offsets in arcsec."""
    x = np.radians(np.asarray(xi, dtype=float) / 3600.0)
    y = np.radians(np.asarray(eta, dtype=float) / 3600.0)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    den = np.cos(d0) - y * np.sin(d0)
    ra = a0 + np.arctan2(x, den)
    dec = np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, den))
    return np.degrees(ra) % 360.0, np.degrees(dec)


# --------------------------------------------------------------------- true WCS
@dataclass
class ChipWCS:
    """The true WCS of one chip in one frame (see the module docstring)."""

    ra0: float
    dec0: float
    crpix: np.ndarray
    cd: np.ndarray  # arcsec per pixel, (xi, eta) <- (u, v)
    k: float
    binning: tuple[int, int] = (1, 1)  # crpix, cd and k are unbinned; outputs binned

    def world_to_pixel(self, ra, dec, *, unbinned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel positions (on the binned data grid, or the unbinned one with
        ``unbinned``) of sky positions in degrees."""
        xi, eta = sky_to_tan(ra, dec, self.ra0, self.dec0)
        uu, vv = np.linalg.solve(self.cd, np.vstack([xi, eta]))
        if self.k:
            big_r = np.hypot(uu, vv)
            r = big_r.copy()
            for _ in range(6):  # Newton on r + k r^3 = R
                r -= (r + self.k * r**3 - big_r) / (1.0 + 3.0 * self.k * r**2)
            with np.errstate(invalid="ignore", divide="ignore"):
                f = np.where(big_r > 0, r / big_r, 1.0)
            uu, vv = uu * f, vv * f
        x, y = uu + self.crpix[0] - 1.0, vv + self.crpix[1] - 1.0
        return (x, y) if unbinned else to_binned(x, y, self.binning)

    def header(self, shape: tuple[int, int]) -> fits.Header:
        """A FITS header (TAN-SIP) for an image of ``shape`` (ny, nx) on the (binned) data grid.

        Binned: CRPIX ``(crpix - 0.5) / b + 0.5``, CD times ``b``, and a SIP term ``c u^p v^q``
        of the u (v) correction becomes ``c bx^(p-1) by^q`` (``c bx^p by^(q-1)``).
        """
        bx, by = self.binning
        binned = (bx, by) != (1, 1)

        def sip(axis: str, p: int, q: int, c: float) -> float:
            if not binned:
                return c
            return c * float(bx) ** (p - (axis == "u")) * float(by) ** (q - (axis == "v"))

        crpix = (self.crpix - 0.5) / np.array([bx, by], float) + 0.5 if binned else self.crpix
        h = fits.Header()
        h["WCSAXES"] = 2
        h["CTYPE1"] = "RA---TAN-SIP"
        h["CTYPE2"] = "DEC--TAN-SIP"
        h["CUNIT1"] = "deg"
        h["CUNIT2"] = "deg"
        h["CRPIX1"] = float(crpix[0])
        h["CRPIX2"] = float(crpix[1])
        h["CRVAL1"] = float(self.ra0)
        h["CRVAL2"] = float(self.dec0)
        cd = self.cd / 3600.0
        if binned:
            cd = cd @ np.diag([float(bx), float(by)])
        h["CD1_1"], h["CD1_2"] = float(cd[0, 0]), float(cd[0, 1])
        h["CD2_1"], h["CD2_2"] = float(cd[1, 0]), float(cd[1, 1])
        h["RADESYS"] = "ICRS"
        k = float(self.k)
        forward = {"A": {(3, 0): k, (1, 2): k}, "B": {(0, 3): k, (2, 1): k}}
        k2 = 3.0 * k * k
        inverse = {
            "AP": {(3, 0): -k, (1, 2): -k, (5, 0): k2, (3, 2): 2 * k2, (1, 4): k2},
            "BP": {(0, 3): -k, (2, 1): -k, (0, 5): k2, (2, 3): 2 * k2, (4, 1): k2},
        }
        h["A_ORDER"] = 3
        for (p, q), c in forward["A"].items():
            h[f"A_{p}_{q}"] = sip("u", p, q, c)
        h["B_ORDER"] = 3
        for (p, q), c in forward["B"].items():
            h[f"B_{p}_{q}"] = sip("v", p, q, c)
        h["AP_ORDER"] = 5
        for (p, q), c in inverse["AP"].items():
            h[f"AP_{p}_{q}"] = sip("u", p, q, c)
        h["BP_ORDER"] = 5
        for (p, q), c in inverse["BP"].items():
            h[f"BP_{p}_{q}"] = sip("v", p, q, c)
        h["IMAGEW"] = shape[1]
        h["IMAGEH"] = shape[0]
        return h


def chip_wcs(layout: ChipLayout, ra0: float, dec0: float, pa_deg: float, binning=(1, 1)) -> ChipWCS:
    """The true WCS of a chip with the optical axis at (ra0, dec0) and position angle ``pa``.

    ``layout`` is the unbinned chip; ``binning`` the grid positions and header refer to.
    """
    return ChipWCS(
        ra0=ra0,
        dec0=dec0,
        crpix=layout.crpix.copy(),
        cd=sky_rotation(pa_deg) @ layout.cd0,
        k=layout.k_distortion,
        binning=(int(binning[0]), int(binning[1])),
    )


# -------------------------------------------------------------------------- PSF
def moffat_alpha(fwhm_px: float, beta: float) -> float:
    """Moffat core width alpha (pixels) for a FWHM (pixels) and beta."""
    return fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def render_stars(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    fwhm_px: float,
    beta: float,
    *,
    oversample: int = 3,
    floor: float = 0.005,
    max_radius: int = 80,
) -> None:
    """Add Moffat stars to ``image`` (in place).

    Each star is integrated over pixels (``oversample`` x ``oversample`` sub-pixels) in a
    stamp reaching out to where the profile falls below ``floor`` (same unit as ``flux``
    per pixel) and normalised so that the stamp holds exactly ``flux``.

    Parameters
    ----------
    image : ndarray (ny, nx)
    x, y : ndarray
        0-based pixel positions of the centres.
    flux : ndarray
        Total flux of each star (e.g. electrons).
    fwhm_px, beta : float
        Moffat FWHM (pixels) and beta.
    """
    ny, nx = image.shape
    alpha = moffat_alpha(fwhm_px, beta)
    peak_norm = (beta - 1.0) / (np.pi * alpha**2)
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    for xs, ys, f in zip(x, y, flux, strict=True):
        if f <= 0:
            continue
        ratio = max(f * peak_norm / floor, 1.0)
        radius = alpha * np.sqrt(max(ratio ** (1.0 / beta) - 1.0, 0.0))
        h = int(np.clip(np.ceil(radius), 4, max_radius))
        ix0, iy0 = int(np.rint(xs)), int(np.rint(ys))
        x1, x2 = max(ix0 - h, 0), min(ix0 + h + 1, nx)
        y1, y2 = max(iy0 - h, 0), min(iy0 + h + 1, ny)
        if x1 >= x2 or y1 >= y2:
            continue
        gx = (np.arange(ix0 - h, ix0 + h + 1)[:, None] + sub[None, :] - xs).ravel()
        gy = (np.arange(iy0 - h, iy0 + h + 1)[:, None] + sub[None, :] - ys).ravel()
        prof = (1.0 + (gy[:, None] ** 2 + gx[None, :] ** 2) / alpha**2) ** (-beta)
        n = 2 * h + 1
        stamp = prof.reshape(n, oversample, n, oversample).sum(axis=(1, 3))
        stamp *= f / stamp.sum()
        sy = slice(y1 - (iy0 - h), y2 - (iy0 - h))
        sx = slice(x1 - (ix0 - h), x2 - (ix0 - h))
        image[y1:y2, x1:x2] += stamp[sy, sx]
