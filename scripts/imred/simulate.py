"""Simulate a raw imaging night of a CCD camera described by an instrument file.

:func:`simulate_night` reads a scenario (``config/scenarios/NAME.yaml``, schema
``config/schemas/scenario.schema.yaml``), plans the night (afternoon biases, darks and
dome flats or evening twilight flats; dithered science frames around the field's
meridian transit), and writes one multi-extension FITS file per exposure exactly as the
instrument file describes the camera, plus the truth. The same seed gives the same
bytes. :func:`main` is the command line (``imred simulate``).

Raw files (``{out}/raw/{instrument}_{YYYYMMDD}_{NNNN}.fits``)
    Primary header with the frame's keywords (written through the instrument file's
    ``header`` spec: keyword names, value maps, formats), one image extension per chip
    (EXTNAME = the chip's ``extension``) holding the whole raw array (data and overscan
    sections), uint16 as BITPIX 16 with BZERO 32768; gain, read noise and saturation in
    the chip's header when the instrument file reads them from a keyword. Any number of
    chips, placed by their ``geometry``; chips without a ``datasec`` are all data, of
    ``camera.chip_size``. Cameras whose chips have ``select`` get a file per chip (or per
    group of chips with the same ``select``), named to match its ``filename`` glob and
    carrying its ``keyword`` (:mod:`imred.sim.rawfiles`); chips sharing a file and
    extension are the halves of a split detector, each with its own fixed ``band``
    (:mod:`imred.sim.plan`: their own flat, sky, zero point and seeing).

Model, in the order it happens (each step has a switch in the scenario)
    Expected electrons per data pixel: ``(sky + stars) * flat + dark * t`` for science
    frames; ``lamp * illumination * flat`` (dome) or ``twilight sky * gradient * flat``
    for flats; ``dark * t`` for darks; nothing for biases. Then Poisson noise
    (``poisson``), cosmic-ray charge (``cosmic_rays``), division by each amplifier's
    gain (``gain``), the inverse of the instrument's non-linearity correction
    (``nonlinearity``), read noise (``read_noise``), the bias (fixed structure + a level
    drifting from frame to frame, also in the overscan; ``bias``), rounding and clipping
    at the saturation level (``saturation``).

    Binning (``observing.binning: [bx, by]``, default [1, 1]): on-chip binning of every
    frame. The expected electrons (sky, stars, flat, dark current, lamp) and cosmic-ray
    charge are made on the unbinned grid and summed over bx x by pixels before Poisson
    noise (a Poisson sum is Poisson) and read-out, so a binned pixel holds bx*by times the
    charge; read noise is added once per binned pixel, and gain, non-linearity and the
    saturation clip (the instrument's level in ADU) act on the binned pixel (the summing
    well / serial register, not the single pixels' full well, saturates). The bias is an
    electronic offset: its level is unchanged and its structure is the block mean of the
    unbinned one. Raw arrays and all sections (data, amplifiers, overscan) are divided by
    the binning, as ``imred.sections.parse_section(text, binning)`` reads them back
    (sections must fall on binned-pixel boundaries); the raw header carries the
    instrument's binning keyword and DATASEC/BIASSEC of the binned array. Flat exposure
    levels and twilight exposure times aim at the binned pixel. NIR arrays are not binned.

    Colour terms (``bands[].colour_term: {colour: [c1, c2], k}``, default none): stars
    and galaxies give the electrons of ``m_inst = m_catalog + k (m_c1 - m_c2)`` (catalog
    magnitudes; :mod:`imred.sim.catalog`); the reference catalog keeps the catalog ones.

    Stars (``stars``) come from a synthetic catalog (:mod:`imred.sim.catalog`), placed by
    the true WCS (pointing = field + ``dither`` offset + pointing error; position angle
    = rotator + ``rotator.offset_deg``; radial ``distortion``) and drawn as Moffat
    profiles whose FWHM (``seeing``) varies per frame and grows with airmass. A star of
    magnitude m gives ``t * 10**(-0.4 (m - ZP))`` electrons before the flat with
    ``ZP = zero_point - extinction * airmass + 2.5 log10(transparency)``; airmass comes
    from the time and the instrument's site (astropy AltAz). ``stars.catalog`` takes the
    stars from a real catalog file instead. Galaxies (``galaxies``, off by default) are
    PSF-convolved Sersic profiles (:mod:`imred.sim.galaxies`). Fringes (``fringes``, in
    bands with a ``fringe_amplitude``) add ``pattern * sky * t`` before the flat in
    science frames.

Truth (``{out}/truth/``): the pipeline may read only ``refcat.fits``. With binning, every
pixel quantity is on the binned raw/product grid: "pixel" below is a binned pixel.
    ``scenario.yaml``       the scenario as run (defaults filled in, final seed)
    ``frames.ecsv``         one row per exposure: ``frame``, ``file``, ``imagetype``,
                            ``band``, ``exptime`` (s), ``dateobs``, ``mjd`` (start, UTC),
                            ``target``, ``ra_cmd``/``dec_cmd`` (commanded pointing, ICRS
                            deg, as in the header), ``ra``/``dec`` (true optical axis),
                            ``rotator`` (header, deg), ``pa`` (true position angle, deg),
                            ``airmass`` (mid-exposure), ``seeing`` (FWHM arcsec),
                            ``transparency``, ``zero_point`` (mag giving 1 e-/s before the
                            flat), ``sky`` (e-/s/pixel at the optical axis before the flat),
                            ``illumination`` (e-/s/pixel of lamp or twilight sky for flats),
                            ``sky_gradient`` (peak-to-peak fraction across the mosaic) and
                            ``sky_gradient_angle`` (deg, direction of increase from east
                            towards north in the focal plane at PA 0), ``temperature`` (C),
                            ``binning`` (``"BXxBY"``); NaN where it does not apply. ``sky``
                            and ``illumination`` are per (binned) raw pixel: bx*by times
                            those of an unbinned pixel.
                            ``file`` lists the exposure's raw files (comma-separated
                            when the camera writes a file per chip).
    ``frame_chips.ecsv``    one row per exposure x chip: ``bias_offset`` (ADU, the drift
                            added to the fixed bias, data and overscan alike),
                            ``n_cosmic_rays``, ``gain`` (e-/ADU), ``read_noise`` (e-),
                            ``band``, ``zero_point``, ``sky``, ``seeing``, ``illumination``
                            as this chip sees them (a split detector's fixed band; else
                            the frame's), ``file`` and ``extension`` holding the chip.
    ``frames/{frame}.fits`` per exposure, one extension per chip (EXTNAME = chip name):
                            the cosmic-ray mask (uint8, 1 = charge deposited, data grid,
                            RICE-compressed); for science frames its header carries the
                            true WCS (TAN-SIP, distortion exact in A/B, inverse in AP/BP;
                            binned: CRPIX, CD and SIP terms of the binned pixels).
    ``bias.fits``           per chip: the fixed bias (ADU, raw grid, overscan included;
                            binned: the block mean).
    ``dark.fits``           per chip: dark current (e-/s, data grid), hot pixels included
                            (binned: the block sum).
    ``flat_{band}.fits``    per chip: the true flat (multiplies the sky and stars; 1 at the
                            optical axis for a nominal pixel: vignetting x chip sensitivity
                            x pixel response x dust donuts x dead columns); only the chips
                            that see the band. Binned: the block mean (exact for a uniform
                            illumination; a star's binned pixel gets sum(light x flat)).
    ``fringe_{band}.fits``  per chip, bands with fringes: the pattern (fringe e- = pattern
                            x sky x exptime, before the flat).
    ``badpix.fits``         per chip: bits 1 hot pixel, 2 hot column, 4 dead column
                            (binned: the OR of the block).
    ``nonlinearity.ecsv``   ``power`` and ``coefficient`` of corrected = raw * sum(c_i raw^i)
                            (ADU above bias), ``enabled`` and ``max_adu`` in the meta.
    ``stars.ecsv``          the star catalog: ``id``, ``ra``, ``dec``, ``gr`` (g - r),
                            ``{band}_mag`` for every catalog band (true catalog magnitudes);
                            bands with a colour term add ``{band}_mag_inst`` (the magnitude
                            the camera sees) and the meta ``COLOUR_TERMS`` ({band: {colour,
                            k}}).
    ``galaxies.ecsv``       with galaxies only: as stars.ecsv plus ``sersic_n``,
                            ``r_eff_arcsec``, ``axis_ratio``, ``pa_deg`` and ``galaxy``
                            (true); ids from 10^9, never in the reference catalog.
    ``galaxy_frames.ecsv``  with galaxies only: as star_frames.ecsv without ``peak``, with
                            ``galaxy`` (true), so star metrics can leave them out.
    ``star_frames.ecsv``    one row per star x science frame x chip it falls on (centre
                            within 60 unbinned px of the data section): ``frame``, ``chip``,
                            ``id``, ``x``, ``y`` (0-based on the (binned) data grid), ``flux``
                            (e-, total, before the flat; from the camera's magnitude),
                            ``peak`` (e-/pixel at the centre, before the flat: the profile's
                            central density x the binned pixel's area), ``on_chip`` (centre
                            inside the data section).
    ``refcat.fits``         the reference catalog for the pipeline, as a survey query would
                            give it: ``source_id``, ``ra``, ``dec`` (deg), ``ra_err``,
                            ``dec_err`` (mas), ``{band}_mag``, ``{band}_err`` (mag) for every
                            catalog band, between ``refcat.bright_limit`` and
                            ``refcat.mag_limit`` in the reference band.

``--small`` merges the scenario's ``small:`` block over it (the demo uses the
``demo_small`` camera: the demo camera with 256x256 chips) for tests that run in seconds.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from .errors import ImredError
from .fitsio import merged_header, write_atomic
from .instrument import Instrument, load_instrument
from .schema import fill_defaults, read_yaml, validate
from .sections import format_section
from .sim import catalog, detector, galaxies, optics, rawfiles
from .sim import nir as sim_nir
from .sim.headers import header_cards
from .sim.plan import Frame, plan_night, sequence_bands

SCENARIO_DIR = Path(__file__).resolve().parents[2] / "config" / "scenarios"

# random-stream tags: every stream is np.random.default_rng([seed, tag, ...])
_CATALOG, _REFCAT, _GALAXIES = 2, 3, 4  # 1 is the night plan (imred.sim.plan)
_BIAS, _DARK, _FLAT_CHIP, _FLAT_WINDOW, _FLAT_BAND = 10, 11, 12, 13, 14
_FRINGE_CHIP, _FRINGE_BAND = 15, 16
_NOISE, _COSMICS = 20, 21

STAR_MARGIN_PX = 60  # stars this far outside a chip are still drawn (their wings fall on it)
GALAXY_FIRST_ID = 1_000_000_000  # galaxy ids start here (or after the largest star id)


# ----------------------------------------------------------------- scenario
def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_scenario(scenario: dict | str | Path, *, small: bool = False) -> tuple[dict, str, Path]:
    """Read, validate and complete a scenario.

    Parameters
    ----------
    scenario : dict, str or Path
        A scenario document, the path of a scenario file, or the name of one in
        ``config/scenarios/``.
    small : bool
        Merge the scenario's ``small`` block over it (before defaults are filled in).

    Returns
    -------
    doc, source, base_dir
        The completed scenario, where it came from (for messages) and the folder
        relative instrument paths are read from.
    """
    if isinstance(scenario, dict):
        doc, source, base = copy.deepcopy(scenario), "scenario", Path.cwd()
    else:
        path = Path(scenario)
        if not path.is_file() and path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
            named = SCENARIO_DIR / f"{path.name}.yaml"
            if named.is_file():
                path = named
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
            raise ImredError(
                f"scenario file '{scenario}' does not exist (built-in scenarios: {known}; "
                "give a path or one of these names)"
            )
        doc = read_yaml(path, "scenario file")
        source, base = str(path), path.parent
    if not isinstance(doc, dict):
        raise ImredError(f"{source}: a scenario must be a YAML mapping")
    validate(doc, "scenario", source)
    overrides = doc.pop("small", None)
    if small:
        if not overrides:
            raise ImredError(f"{source}: --small needs a 'small:' block in the scenario")
        doc = _merge(doc, overrides)
        validate(doc, "scenario", f"{source} (with its small: block)")
    doc = fill_defaults(doc, "scenario")
    names = [b["name"] for b in doc["bands"]]
    if len(set(names)) != len(names):
        raise ImredError(f"{source}: bands are listed twice: {', '.join(names)}")
    return doc, source, base


def _instrument(sc: dict, base: Path) -> Instrument:
    name = sc["instrument"]
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and not path.is_absolute() and (base / path).is_file():
        name = str(base / path)
    inst = load_instrument(name)
    if not inst.site:
        raise ImredError(
            f"{inst.source}: the simulator needs the site (longitude_deg, latitude_deg) for "
            "airmass and twilight; add a site block to the instrument file"
        )
    return inst


# ------------------------------------------------------------------- writing
def _frame_values(f: Frame, inst: Instrument, binning=(1, 1)) -> dict[str, Any]:
    """The normalised header values of one exposure (pointing in the instrument's frame)."""
    values: dict[str, Any] = {
        "imagetype": f.imagetype,
        "band": f.band,
        "exptime": f.exptime,
        "dateobs": f.dateobs,
        "target": f.target,
        "binning": f"{int(binning[0])}x{int(binning[1])}",
        "readout_mode": "normal",
        "temperature": round(f.temperature, 2),
    }
    if np.isfinite(f.ra_cmd):
        ra, dec = _to_instrument_frame(f.ra_cmd, f.dec_cmd, f.mjd, inst)
        values.update(ra=ra, dec=dec)
    if np.isfinite(f.airmass):
        values["airmass"] = round(f.airmass, 4)
    if f.imagetype in ("science", "twilight-flat"):
        values["rotator"] = f.rotator
    return values


def _to_instrument_frame(ra: float, dec: float, mjd: float, inst: Instrument) -> tuple:
    kind = inst.pointing.get("frame", "icrs")
    if kind == "icrs":
        return ra, dec
    from astropy.coordinates import FK5, TETE

    coord = SkyCoord(ra * u.deg, dec * u.deg)
    if kind == "fk5":
        eq = Time(inst.pointing.get("equinox", 2000.0), format="jyear")
        out = coord.transform_to(FK5(equinox=eq))
    else:
        out = coord.transform_to(TETE(obstime=Time(mjd, format="mjd", scale="utc")))
    return float(out.ra.deg), float(out.dec.deg)


def _check_normalises(inst, chip, primary: fits.Header, ext: fits.Header, f: Frame) -> None:
    """Read the headers back through the instrument file, as the pipeline will."""
    values, problems = inst.normalise(merged_header(primary, ext), chip)
    band = chip.band or f.band
    wrong = [
        f"{key} reads back as {values.get(key)!r}, not {want!r}"
        for key, want in (("imagetype", f.imagetype), ("band", band), ("exptime", f.exptime))
        if values.get(key) != want and not (key == "band" and want is None)
    ]
    if problems or wrong:
        raise ImredError(
            f"{inst.source}: the simulator cannot write frames this instrument file reads back "
            f"cleanly (chip {chip.name}): {'; '.join(problems + wrong)}"
        )


def _write_raw(
    path: Path, f: Frame, chips: list, sc: dict, inst: Instrument, layouts, extra=()
) -> None:
    binning = tuple(sc["observing"]["binning"])
    primary_cards, _ = header_cards(inst.header_spec, _frame_values(f, inst, binning), inst.source)
    primary = fits.Header()
    primary["TELESCOP"] = inst.doc.get("telescope", inst.name)
    primary["INSTRUME"] = inst.name
    primary["SIMULATE"] = (True, "simulated by imred.simulate")
    primary["SIMSEED"] = (int(sc["seed"]), "simulator seed")
    primary["SIMFRAME"] = (f.name, "truth key of this exposure")
    for key, value in [*primary_cards, *extra]:  # extra: a NIR read's keywords
        primary[key] = value
    select = layouts[0].select
    if "keyword" in select:
        primary[select["keyword"]] = select.get("value", "")
    _check_file_chips(inst, path, primary, layouts)
    slots: dict[int, fits.ImageHDU] = {}
    named: list[fits.ImageHDU] = []
    primary_data = None
    for extension, members, data in rawfiles.by_extension(layouts, chips):
        lay = members[0]
        chip = inst.chips[lay.index]
        ext = fits.Header()
        binned = binning != (1, 1)  # the sections of the binned array (as cameras write them)
        if len(members) == 1 and chip.datasec:
            ext["DATASEC"] = format_section(*lay.datasec) if binned else chip.datasec
        single_amp = len(members) == 1 and len(lay.amps) == 1 and chip.amplifiers
        if single_amp and chip.amplifiers[0].get("overscan"):
            over = chip.amplifiers[0]["overscan"]
            ext["BIASSEC"] = format_section(*lay.amps[0].overscan) if binned else over
        for member in members:
            values = {"gain": member.gain, "read_noise": member.read_noise}
            values["saturation"] = member.saturation
            for key, value in header_cards(inst.header_spec, values, inst.source)[1]:
                if key in ext and ext[key] != value:
                    raise ImredError(
                        f"{inst.source}: chips {', '.join(m.name for m in members)} share "
                        f"extension {extension} but need different values of {key} "
                        f"({ext[key]!r}, {value!r}); the simulator cannot write that header"
                    )
                ext[key] = value
        for member in members:
            _check_normalises(inst, inst.chips[member.index], primary, ext, f)
        if lay.extension == 0:
            primary_data = data
            for card in ext.cards:
                primary[card.keyword] = card.value
        elif isinstance(lay.extension, int):
            slots[lay.extension] = fits.ImageHDU(data, header=ext)
        else:
            named.append(fits.ImageHDU(data, header=ext, name=str(lay.extension)))
    hdus = [fits.PrimaryHDU(primary_data, header=primary)]
    for i in range(1, max(slots, default=0) + 1):
        if i not in slots:
            raise ImredError(
                f"{inst.source}: chips are in extensions {sorted(slots)}; the simulator needs "
                "them numbered without gaps (1, 2, ...)"
            )
        hdus.append(slots[i])
    hdus += named
    write_atomic(path, lambda tmp: fits.HDUList(hdus).writeto(tmp))


def _check_file_chips(inst: Instrument, path: Path, primary: fits.Header, layouts) -> None:
    """The instrument file must find exactly these chips in this file (and want the file)."""
    if not inst.wants_file(path.name):
        raise ImredError(
            f"{inst.source}: the simulator names a raw file {path.name}, which files.patterns "
            "does not take; the chips' select.filename and files.patterns disagree"
        )
    ours = {lay.name for lay in layouts}
    found = {c.name for c in inst.chips if c.matches_file(path, primary)}
    if not ours <= found:
        raise ImredError(
            f"{inst.source}: chips {', '.join(sorted(ours - found))} do not select the file "
            f"{path.name} the simulator writes for them"
        )
    others = {c.name for c in inst.chips if c.select != layouts[0].select} & found
    if layouts[0].select and others:
        raise ImredError(
            f"{inst.source}: file {path.name} (written for {', '.join(sorted(ours))}) is also "
            f"selected by chips {', '.join(sorted(others))}; their select must differ"
        )


def _chip_hdus(arrays: dict, layouts, header: dict | None = None) -> fits.HDUList:
    hdus = [fits.PrimaryHDU(header=fits.Header(list((header or {}).items())))]
    for lay in layouts:
        hdu = fits.ImageHDU(arrays[lay.name], name=lay.name)
        hdu.header["CHIP"] = lay.name
        hdus.append(hdu)
    return fits.HDUList(hdus)


def _write_hdus(path: Path, hdul: fits.HDUList) -> None:
    write_atomic(path, lambda tmp: hdul.writeto(tmp))


def _write_table(path: Path, table: Table) -> None:
    fmt = "ascii.ecsv" if path.suffix == ".ecsv" else "fits"
    write_atomic(path, lambda tmp: table.write(tmp, format=fmt, overwrite=True))


# ---------------------------------------------------------------- the night
def _footprint_radius(layouts) -> float:
    """arcsec from the optical axis to the farthest data-pixel corner of any chip."""
    far = 0.0
    for lay in layouts:
        ny, nx = lay.data_shape
        corners = np.array([[0.5, 0.5], [nx + 0.5, 0.5], [0.5, ny + 0.5], [nx + 0.5, ny + 0.5]])
        off = (lay.cd0 @ (corners - lay.crpix).T).T
        far = max(far, float(np.hypot(off[:, 0], off[:, 1]).max()))
    return far


def _gradient(east, north, fraction: float, angle: float, diameter: float) -> np.ndarray:
    return 1.0 + fraction * (east * np.cos(angle) + north * np.sin(angle)) / diameter


@dataclass
class _Night:
    """Everything fixed for the night, shared by all exposures."""

    sc: dict
    inst: Instrument
    layouts: list
    stars: Table
    biases: dict
    darks: dict
    flats: dict
    drift: np.ndarray  # (frame, chip) bias level offsets, ADU
    polynomial: list | None
    focal: dict = field(default_factory=dict)
    diameter: float = 1.0
    galaxies: Table | None = None  # sim.galaxies catalog (None: galaxies off)
    fringes: dict = field(default_factory=dict)  # band -> chip -> pattern (fraction of sky)
    binning: tuple[int, int] = (1, 1)  # on-chip binning (bx, by) of every raw frame
    binned: dict = field(default_factory=dict)  # chip -> its binned layout (read-out, files)

    @property
    def area(self) -> int:
        """Unbinned pixels per binned pixel."""
        return self.binning[0] * self.binning[1]


def _galaxy_light(night: _Night, f: Frame, lay, wcs, light, cond) -> list[dict]:
    """Add the galaxies on one chip to ``light`` (e-, before the flat); their truth rows."""
    gal = night.galaxies
    if gal is None or not len(gal):
        return []
    ny, nx = lay.data_shape
    x, y = wcs.world_to_pixel(gal["ra"], gal["dec"], unbinned=True)
    trunc = night.sc["galaxies"]["truncation_r_eff"]
    reach = np.minimum(trunc * np.asarray(gal["r_eff_arcsec"]) / lay.pixel_scale, 150) + 10
    near = (x > -reach) & (x < nx - 1 + reach) & (y > -reach) & (y < ny - 1 + reach)
    if not near.any():
        return []
    sub = gal[near]
    x, y = x[near], y[near]
    mag = np.asarray(sub[catalog.camera_magnitude_column(sub, cond["band"])])
    flux = f.exptime * 10 ** (-0.4 * (mag - cond["zero_point"]))
    kernel = galaxies.psf_kernel(
        cond["seeing"] / lay.pixel_scale, night.sc["seeing"]["moffat_beta"]
    )
    galaxies.render_galaxies(
        light,
        x,
        y,
        flux,
        np.asarray(sub["r_eff_arcsec"]) / lay.pixel_scale,
        np.asarray(sub["sersic_n"]),
        np.asarray(sub["axis_ratio"]),
        galaxies.pixel_angle(wcs.cd, sub["pa_deg"]),
        kernel,
        trunc,
    )
    inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    x, y = optics.to_binned(x, y, night.binning)
    return [
        {
            "frame": f.name,
            "chip": lay.name,
            "id": int(i),
            "x": float(xs),
            "y": float(ys),
            "flux": float(fl),
            "on_chip": bool(ins),
            "galaxy": True,
        }
        for i, xs, ys, fl, ins in zip(sub["id"], x, y, flux, inside, strict=True)
    ]


def _starlight(night: _Night, f: Frame, lay, wcs) -> tuple[np.ndarray, list[dict]]:
    """Electrons of the stars (and galaxies) on one chip (before the flat), truth rows."""
    light = np.zeros(lay.data_shape, dtype=np.float64)
    cond = f.conditions(lay.band)
    gal_rows = _galaxy_light(night, f, lay, wcs, light, cond)
    stars = night.stars
    if not len(stars):
        return light, gal_rows
    beta = night.sc["seeing"]["moffat_beta"]
    ny, nx = lay.data_shape
    x, y = wcs.world_to_pixel(stars["ra"], stars["dec"], unbinned=True)
    m = STAR_MARGIN_PX
    near = (x > -m) & (x < nx - 1 + m) & (y > -m) & (y < ny - 1 + m)
    x, y = x[near], y[near]
    mag = np.asarray(stars[catalog.camera_magnitude_column(stars, cond["band"])])[near]
    flux = f.exptime * 10 ** (-0.4 * (mag - cond["zero_point"]))
    fwhm_px = cond["seeing"] / lay.pixel_scale
    optics.render_stars(light, x, y, flux, fwhm_px, beta)
    peak = flux * (beta - 1) / (np.pi * optics.moffat_alpha(fwhm_px, beta) ** 2)
    inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
    if night.area != 1:  # truth on the binned grid: positions, peak per binned pixel
        x, y = optics.to_binned(x, y, night.binning)
        peak = peak * night.area
    ids = np.asarray(stars["id"])[near]
    rows = gal_rows + [
        {
            "frame": f.name,
            "chip": lay.name,
            "id": int(i),
            "x": float(xs),
            "y": float(ys),
            "flux": float(fl),
            "peak": float(pk),
            "on_chip": bool(ins),
        }
        for i, xs, ys, fl, pk, ins in zip(ids, x, y, flux, peak, inside, strict=True)
    ]
    return light, rows


def _expected_electrons(night: _Night, f: Frame, lay) -> tuple[np.ndarray, list, object]:
    """Mean electrons per (unbinned) data pixel of one chip in one exposure, star rows and
    the true WCS (positions and header on the binned grid). The frame's sky and
    illumination are per binned pixel: here they are shared out over its pixels."""
    expected = night.darks[lay.name].astype(np.float64) * f.exptime
    if f.imagetype not in ("science", "flat", "twilight-flat"):
        return expected, [], None
    cond = f.conditions(lay.band)
    if night.area != 1:
        share = {"sky": cond["sky"] / night.area, "illumination": cond["illumination"] / night.area}
        cond = {**cond, **share}
    flat = night.flats[cond["band"]][lay.name]
    east, north = night.focal[lay.name]
    frac, angle = f.sky_gradient
    if f.imagetype == "science":
        wcs = optics.chip_wcs(lay, f.ra, f.dec, f.pa, night.binning)
        light, rows = _starlight(night, f, lay, wcs)
        light += cond["sky"] * f.exptime * _gradient(east, north, frac, angle, night.diameter)
        fringe = night.fringes.get(cond["band"], {}).get(lay.name)
        if fringe is not None:  # additive, scaling with the sky level (before the flat)
            light += fringe * (cond["sky"] * f.exptime)
        return expected + light * flat, rows, wcs
    if f.imagetype == "flat":  # the lamp lights the mosaic with a fixed, gentle gradient
        frac, angle = night.sc["calibrations"]["flat"]["dome_illumination"], 0.7
    illum = cond["illumination"] * f.exptime * _gradient(east, north, frac, angle, night.diameter)
    return expected + illum * flat, [], None


def _expose(night: _Night, f: Frame, f_i: int, lay) -> dict:
    """Simulate one chip of one exposure: raw pixels and its truth."""
    sc, seed = night.sc, night.sc["seed"]
    expected, star_rows, wcs = _expected_electrons(night, f, lay)
    expected = optics.bin_sum(expected, night.binning)  # on-chip binning sums the charge
    binned = night.binned.get(lay.name, lay)
    rng = np.random.default_rng([seed, _NOISE, f.index, lay.index])
    if sc["poisson"]["enabled"]:
        electrons = rng.poisson(expected).astype(np.float32)
    else:
        electrons = expected.astype(np.float32)
    cosmic, n_cr = detector.cosmic_rays(
        lay.data_shape,
        f.exptime,
        sc["cosmic_rays"],
        np.random.default_rng([seed, _COSMICS, f.index, lay.index]),
    )
    cosmic = optics.bin_sum(cosmic, night.binning)
    electrons += cosmic
    offset = float(night.drift[f_i, lay.index])
    raw = detector.read_out(
        electrons,
        binned,
        night.biases[lay.name] + np.float32(offset),
        rng,
        read_noise=sc["read_noise"]["enabled"],
        polynomial=night.polynomial,
        saturation=sc["saturation"]["enabled"],
    )
    header = wcs.header(binned.data_shape) if wcs is not None else fits.Header()
    header["CHIP"] = lay.name
    mask = fits.CompImageHDU(
        (cosmic > 0).astype(np.uint8), header=header, name=lay.name, compression_type="RICE_1"
    )
    cond = f.conditions(lay.band)
    chip_row = {
        "frame": f.name,
        "chip": lay.name,
        "bias_offset": offset,
        "n_cosmic_rays": n_cr,
        "gain": lay.gain,
        "read_noise": lay.read_noise,
        "band": cond["band"] or "",
        "zero_point": cond["zero_point"],
        "sky": cond["sky"],
        "seeing": cond["seeing"],
        "illumination": cond["illumination"],
    }
    return {"raw": raw, "mask": mask, "chip_row": chip_row, "star_rows": star_rows}


def simulate_night(
    scenario: dict | str | Path,
    outdir: str | Path,
    *,
    seed: int | None = None,
    small: bool = False,
) -> dict:
    """Write a raw night and its truth (see the module docstring).

    Parameters
    ----------
    scenario : dict, str or Path
        Scenario document, scenario file, or the name of a file in ``config/scenarios``.
    outdir : str or Path
        Output folder: raw frames go to ``outdir/raw``, the truth to ``outdir/truth``.
    seed : int, optional
        Overrides the scenario's seed.
    small : bool
        Merge the scenario's ``small:`` block (a fast variant for tests).

    Returns
    -------
    dict
        ``raw`` and ``truth`` (folders), ``files`` (raw file paths), ``n_files``,
        ``instrument``, ``night`` (YYYYMMDD), ``seed``, ``n_stars``.
    """
    sc, _, base = load_scenario(scenario, small=small)
    if seed is not None:
        if int(seed) < 0:
            raise ImredError(f"--seed must be 0 or positive, not {seed}")
        sc["seed"] = int(seed)
    inst = _instrument(sc, base)
    seed_ = sc["seed"]
    distortion = sc["distortion"]
    layouts = optics.chip_layouts(
        inst,
        gain_enabled=sc["gain"]["enabled"],
        distortion_arcsec_at_600=(
            distortion["shift_arcsec_at_10arcmin"] if distortion["enabled"] else 0.0
        ),
        chip_size=sc["camera"]["chip_size"],
        only=sc["camera"]["chips"],
        fallback=sc["camera"],
    )
    nir_cam = sim_nir.NirCamera(sc, inst, layouts) if sim_nir.is_nir(layouts) else None
    binning = (int(sc["observing"]["binning"][0]), int(sc["observing"]["binning"][1]))
    if binning != (1, 1) and nir_cam is not None:
        raise ImredError(
            "scenario: observing.binning is for CCDs; NIR arrays are not binned (use [1, 1])"
        )
    binned = {lay.name: optics.binned_layout(lay, binning, inst.source) for lay in layouts}
    not_ccd = [f"{lay.name} ({lay.kind})" for lay in layouts if lay.kind != "ccd" and not nir_cam]
    if not_ccd:
        raise ImredError(
            f"{inst.source}: chips {', '.join(not_ccd)} are not CCDs, which the simulator does "
            "not write yet; leave them out with camera.chips in the scenario"
        )
    band_names = [b["name"] for b in sc["bands"]]
    polys = catalog.colour_polynomials(sc["stars"], band_names)
    night_id = sc["night"].replace("-", "")
    outdir = Path(outdir)
    raw_dir, truth_dir = outdir / "raw", outdir / "truth"
    frames = plan_night(sc, inst, layouts, f"{inst.name}_{night_id}")
    groups = rawfiles.raw_files(layouts)  # the files of one exposure
    files = [
        [raw_dir / rawfiles.file_name(g, f.name, f.index, f.dateobs) for g in groups]
        for f in frames
    ]
    if nir_cam is not None:  # NIR arrays: one file per read (imred.sim.nir)
        files = [nir_cam.read_files(f, paths) for f, paths in zip(frames, files, strict=True)]
    all_files = [p for paths in files for p in paths]
    if len(set(all_files)) != len(all_files):
        raise ImredError(
            f"{inst.source}: the chips' select.filename globs give two exposures the same file "
            "name; the first wildcard of each must leave room for the exposure number"
        )
    if raw_dir.is_dir():
        ours = {p.name for p in all_files}
        foreign = sorted(p.name for p in raw_dir.iterdir() if p.name not in ours)
        if foreign:
            raise ImredError(
                f"{raw_dir} already holds other files ({', '.join(foreign[:3])}"
                f"{' ...' if len(foreign) > 3 else ''}); choose an empty --out folder "
                "(a raw folder must hold one night only)"
            )
    raw_dir.mkdir(parents=True, exist_ok=True)
    (truth_dir / "frames").mkdir(parents=True, exist_ok=True)

    # fixed per-chip products
    biases, darks, bits, flats = {}, {}, {}, {b: {} for b in band_names}
    wheel = [b["name"] for b in sequence_bands(sc, layouts)[0]]
    for lay in layouts:
        c = lay.index
        biases[lay.name] = optics.bin_mean(  # an electronic offset: not summed by binning
            detector.bias_structure(lay, sc["bias"], np.random.default_rng([seed_, _BIAS, c])),
            binning,
        )
        darks[lay.name], bits[lay.name], response = detector.dark_and_defects(
            lay, sc["dark"], sc["bad_columns"], np.random.default_rng([seed_, _DARK, c])
        )
        for b_index, band in enumerate(band_names):
            if band != lay.band and (lay.band or band not in wheel):
                continue  # a band this chip never sees (split detectors)
            flats[band][lay.name] = detector.make_flat(
                lay,
                sc["flat"],
                response,
                np.random.default_rng([seed_, _FLAT_CHIP, c]),
                np.random.default_rng([seed_, _FLAT_BAND, c, b_index]),
                np.random.default_rng([seed_, _FLAT_WINDOW, c]),
            )
    diameter = 2.0 * _footprint_radius(layouts)
    fringes = _fringe_patterns(sc, layouts, flats)

    # stars: a catalog covering every dither of every chip, and the reference catalog
    fld, dith = sc["field"], sc["dither"]
    reach = max(np.hypot(*o) for o in dith["offsets_arcsec"]) if dith["enabled"] else 0.0
    margin = STAR_MARGIN_PX * max(lay.pixel_scale for lay in layouts)
    radius = diameter / 2 + reach + 5 * dith["pointing_error_arcsec"] + margin + 30.0
    if sc["stars"]["enabled"] and sc["stars"]["catalog"]:
        stars = catalog.read_star_catalog(sc["stars"], base, fld["ra_deg"], fld["dec_deg"], radius)
    else:
        stars = catalog.make_star_catalog(
            sc["stars"],
            fld["ra_deg"],
            fld["dec_deg"],
            radius,
            np.random.default_rng([seed_, _CATALOG]),
        )
    refcat = catalog.make_refcat(
        stars,
        sc["refcat"],
        sc["stars"]["reference_band"],
        [c[: -len("_mag")] for c in stars.colnames if c.endswith("_mag")],
        np.random.default_rng([seed_, _REFCAT]),
    )
    terms = catalog.colour_terms(sc["bands"])
    catalog.add_instrumental_magnitudes(stars, terms)
    galaxy_table = None
    if sc["galaxies"]["enabled"]:
        lacking = [b for b in band_names if b not in polys]
        if lacking:
            raise ImredError(
                f"scenario: galaxies need stars.colours entries for {', '.join(lacking)} "
                "(galaxy magnitudes come from the colour polynomials)"
            )
        galaxy_table = galaxies.make_galaxy_catalog(
            sc["galaxies"],
            polys,
            sc["stars"]["reference_band"],
            fld["ra_deg"],
            fld["dec_deg"],
            radius,
            np.random.default_rng([seed_, _GALAXIES]),
            max(GALAXY_FIRST_ID, int(np.max(stars["id"], initial=0)) + 1),
        )
        catalog.add_instrumental_magnitudes(galaxy_table, terms, "galaxy")

    # the bias level: a random walk per chip through the night
    drift_sd = sc["bias"]["drift_adu"] if sc["bias"]["enabled"] else 0.0
    steps = np.random.default_rng([seed_, _BIAS, 999]).normal(
        0.0, drift_sd, (len(frames), len(inst.chips))
    )
    nonlin = inst.detector.get("nonlinearity", {}).get("polynomial")
    night = _Night(
        sc=sc,
        inst=inst,
        layouts=layouts,
        stars=stars,
        biases=biases,
        darks=darks,
        flats=flats,
        drift=np.cumsum(steps, axis=0),
        polynomial=nonlin if (sc["nonlinearity"]["enabled"] and nonlin) else None,
        focal={lay.name: lay.focal_plane() for lay in layouts},
        diameter=diameter,
        galaxies=galaxy_table,
        fringes=fringes,
        binning=binning,
        binned=binned,
    )

    star_rows: list[dict] = []
    chip_rows: list[dict] = []
    for f_i, (f, paths) in enumerate(zip(frames, files, strict=True)):
        if nir_cam is not None:  # NIR arrays: their reads (imred.sim.nir)
            electrons = [_expected_electrons(night, f, lay) for lay in layouts]
            chips = nir_cam.expose(f, electrons, night.biases, night.drift[f_i], night.polynomial)
        else:
            chips = [_expose(night, f, f_i, lay) for lay in layouts]
        reads = nir_cam.files(f, paths) if nir_cam is not None else [(f, paths, (), "raw")]
        for read_f, read_paths, cards, key in reads:
            for group, path in zip(groups, read_paths, strict=True):
                mine = [c for c in chips if c["chip_row"]["chip"] in group.chip_names]
                arrays = [c[key] for c in mine]
                group_layouts = [binned[lay.name] for lay in group.layouts]
                _write_raw(path, read_f, arrays, sc, inst, group_layouts, cards)
                for c, lay in zip(mine, group.layouts, strict=True):
                    c["chip_row"].setdefault("file", path.name)
                    c["chip_row"]["extension"] = str(lay.extension)
        primary = fits.PrimaryHDU(
            header=fits.Header([("FRAME", f.name), ("IMAGETYP", f.imagetype)])
        )
        hdul = fits.HDUList([primary] + [c["mask"] for c in chips])
        _write_hdus(truth_dir / "frames" / f"{f.name}.fits", hdul)
        for c in chips:
            chip_rows.append(c["chip_row"])
            star_rows.extend(c["star_rows"])

    _write_truth(
        truth_dir,
        night,
        frames,
        files,
        bits,
        refcat,
        star_rows,
        chip_rows,
    )
    if nir_cam is not None:
        nir_cam.write_truth(truth_dir, {f.name: p for f, p in zip(frames, files, strict=True)})
    return {
        "raw": str(raw_dir),
        "truth": str(truth_dir),
        "files": [str(p) for p in all_files],
        "n_files": len(all_files),
        "instrument": inst.name,
        "night": night_id,
        "seed": seed_,
        "n_stars": len(stars),
        "n_galaxies": 0 if galaxy_table is None else len(galaxy_table),
    }


def _bin_bits(bits: np.ndarray, binning: tuple[int, int]) -> np.ndarray:
    """Bad-pixel bits on the binned grid: a binned pixel has every bit of its pixels."""
    bx, by = binning
    if (bx, by) == (1, 1):
        return bits
    ny, nx = bits.shape
    blocks = bits.reshape(ny // by, by, nx // bx, bx)
    return np.bitwise_or.reduce(np.bitwise_or.reduce(blocks, axis=3), axis=1)


def _fringe_patterns(sc: dict, layouts, flats: dict) -> dict:
    """Fringe pattern (fraction of the sky) per band with a fringe amplitude and chip."""
    out: dict[str, dict] = {}
    if not sc["fringes"]["enabled"]:
        return out
    for b_index, band in enumerate(sc["bands"]):
        if band["fringe_amplitude"] <= 0:
            continue
        for lay in layouts:
            if lay.name not in flats[band["name"]]:
                continue  # a band this chip never sees
            out.setdefault(band["name"], {})[lay.name] = detector.fringe_pattern(
                lay.data_shape,
                band["fringe_amplitude"],
                sc["fringes"],
                np.random.default_rng([sc["seed"], _FRINGE_CHIP, lay.index]),
                np.random.default_rng([sc["seed"], _FRINGE_BAND, lay.index, b_index]),
            )
    return out


_FRAME_UNITS = {
    "exptime": "s",
    "ra_cmd": "deg",
    "dec_cmd": "deg",
    "ra": "deg",
    "dec": "deg",
    "rotator": "deg",
    "pa": "deg",
    "seeing": "arcsec",
    "zero_point": "mag",
    "sky": "electron/(s pix)",
    "illumination": "electron/(s pix)",
    "sky_gradient_angle": "deg",
    "temperature": "deg_C",
}


def _frame_row(f: Frame, paths: list[Path]) -> dict:
    frac, angle = f.sky_gradient
    return {
        "frame": f.name,
        "file": ",".join(p.name for p in paths),
        "imagetype": f.imagetype,
        "band": f.band or "",
        "exptime": f.exptime,
        "dateobs": f.dateobs,
        "mjd": f.mjd,
        "target": f.target,
        "ra_cmd": f.ra_cmd,
        "dec_cmd": f.dec_cmd,
        "ra": f.ra,
        "dec": f.dec,
        "rotator": f.rotator,
        "pa": f.pa if f.imagetype == "science" else np.nan,
        "airmass": f.airmass,
        "seeing": f.seeing,
        "transparency": f.transparency,
        "zero_point": f.zero_point,
        "sky": f.sky,
        "illumination": f.illumination,
        "sky_gradient": frac,
        "sky_gradient_angle": float(np.degrees(angle)),
        "temperature": f.temperature,
    }


def _write_truth(
    truth_dir: Path, night: _Night, frames, files, bits, refcat, star_rows, chip_rows
) -> None:
    sc, inst, layouts = night.sc, night.inst, night.layouts
    b = night.binning  # truth images on the binned (product) grid
    darks = {k: optics.bin_sum(v, b) for k, v in night.darks.items()}  # e-/s per binned pixel
    bits = {k: _bin_bits(v, b) for k, v in bits.items()}
    flats = {
        band: {k: optics.bin_mean(v, b) for k, v in d.items()} for band, d in night.flats.items()
    }
    fringes = {
        band: {k: optics.bin_mean(v, b) for k, v in d.items()} for band, d in night.fringes.items()
    }

    def dump(tmp):
        with open(tmp, "w") as fh:
            yaml.safe_dump(sc, fh, sort_keys=False)

    write_atomic(truth_dir / "scenario.yaml", dump)
    table = Table(rows=[_frame_row(f, path) for f, path in zip(frames, files, strict=True)])
    table["binning"] = f"{b[0]}x{b[1]}"
    for col, unit in _FRAME_UNITS.items():
        table[col].unit = unit
    table.meta["description"] = "imred simulator truth: one row per exposure"
    _write_table(truth_dir / "frames.ecsv", table)
    _write_table(truth_dir / "frame_chips.ecsv", Table(rows=chip_rows))
    cols = ["frame", "chip", "id", "x", "y", "flux", "peak", "on_chip"]
    types = [str, str, np.int64, float, float, float, float, bool]
    rows = [[r[c] for c in cols] for r in star_rows if not r.get("galaxy")]
    sf = Table(rows=rows, names=cols, dtype=types)
    _write_table(truth_dir / "star_frames.ecsv", sf)
    _write_table(truth_dir / "stars.ecsv", night.stars)
    if night.galaxies is not None:
        _write_table(truth_dir / "galaxies.ecsv", night.galaxies)
        cols = ["frame", "chip", "id", "x", "y", "flux", "on_chip", "galaxy"]
        types = [str, str, np.int64, float, float, float, bool, bool]
        rows = [[r[c] for c in cols] for r in star_rows if r.get("galaxy")]
        _write_table(truth_dir / "galaxy_frames.ecsv", Table(rows=rows, names=cols, dtype=types))
    _write_table(truth_dir / "refcat.fits", refcat)
    nl = inst.detector.get("nonlinearity", {})
    poly = nl.get("polynomial") or [1.0]
    nlt = Table({"power": np.arange(len(poly)), "coefficient": np.asarray(poly, dtype=float)})
    nlt.meta.update(
        enabled=night.polynomial is not None,
        max_adu=nl.get("max_adu"),
        definition="corrected = raw * sum(coefficient * raw**power), ADU above bias",
    )
    _write_table(truth_dir / "nonlinearity.ecsv", nlt)
    _write_hdus(truth_dir / "bias.fits", _chip_hdus(night.biases, layouts, {"BUNIT": "adu"}))
    _write_hdus(truth_dir / "dark.fits", _chip_hdus(darks, layouts, {"BUNIT": "electron/s"}))
    bit_hdr = {f"BIT{v}": k for k, v in detector.BADPIX_BITS.items()}
    _write_hdus(truth_dir / "badpix.fits", _chip_hdus(bits, layouts, bit_hdr))
    for band, per_chip in flats.items():
        seen = [lay for lay in layouts if lay.name in per_chip]  # split chips see one band
        if not seen:
            continue
        _write_hdus(truth_dir / f"flat_{band}.fits", _chip_hdus(per_chip, seen, {"BAND": band}))
    for band, per_chip in fringes.items():
        seen = [lay for lay in layouts if lay.name in per_chip]
        hdr = {"BAND": band, "COMMENT": "fringe e- = pattern x sky (e-/s/pix) x exptime"}
        _write_hdus(truth_dir / f"fringe_{band}.fits", _chip_hdus(per_chip, seen, hdr))


# ----------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    """``imred simulate SCENARIO --out DIR [--seed N] [--small]``."""
    parser = argparse.ArgumentParser(
        prog="imred simulate",
        description="Write a simulated raw night (and its truth) for a CCD camera.",
    )
    parser.add_argument("scenario", help="scenario file (or name in config/scenarios)")
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output folder: raw frames in DIR/raw, truth in DIR/truth",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed (overrides the scenario's)"
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="the scenario's small variant (fewer, smaller frames; for tests)",
    )
    args = parser.parse_args(argv)
    summary = simulate_night(args.scenario, args.out, seed=args.seed, small=args.small)
    print(
        f"simulated {summary['n_files']} raw frames of {summary['instrument']} night "
        f"{summary['night']} (seed {summary['seed']}): raw in {summary['raw']}, "
        f"truth in {summary['truth']}"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main())
    except ImredError as err:
        print(f"imred simulate: error: {err}", file=sys.stderr)
        sys.exit(2)
