"""The night plan: which exposures, when, and under which true conditions.

Afternoon biases, darks and dome flats start at ``observing.calibration_local_time``
(local mean solar time at the site); twilight flats start when the sun reaches
``calibrations.flat.twilight_sun_alt`` in the evening, with exposure times adapted to a
sky fading by 1 mag per degree of solar depression; science frames (band after band,
dithered) are centred on the field's highest point during astronomical night (sun below
-12 deg) unless ``observing.start`` is given. Sun and field altitudes and the airmass
come from astropy (AltAz at the instrument's site).

Sky and twilight rates (:attr:`Frame.sky`, :attr:`Frame.illumination`, e-/s) are per raw
pixel: with ``observing.binning`` [bx, by] a binned pixel of bx*by unbinned ones, so flat
levels and twilight exposure times aim at the binned pixel.

Chips with a fixed band (split detectors behind their own filters) see that band in
every exposure: the sequence runs through the other bands (the filter wheel; if every
chip has a fixed band, one sequence with the first band's exposure time and no filter),
and each exposure also carries the conditions of the fixed bands (:attr:`Frame.chip_bands`:
zero point with the band's extinction, sky with its own scatter, seeing scaled by the
band's ``seeing_factor``; twilight sky for twilight flats).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord, get_sun
from astropy.time import Time

from ..errors import ImredError
from ..instrument import Instrument, airmass_at
from . import optics

PLAN_STREAM = 1  # np.random.default_rng([seed, PLAN_STREAM]) draws the night's conditions
TWILIGHT_DIMMING = 1.0  # mag per degree of solar depression


@dataclass
class Frame:
    """One exposure of the night (true and commanded values)."""

    index: int
    name: str
    imagetype: str
    exptime: float
    mjd: float
    band: str | None = None
    target: str = ""
    ra_cmd: float = np.nan
    dec_cmd: float = np.nan
    ra: float = np.nan
    dec: float = np.nan
    rotator: float = 0.0
    pa: float = 0.0
    airmass: float = np.nan
    seeing: float = np.nan
    transparency: float = np.nan
    zero_point: float = np.nan
    sky: float = np.nan
    sky_gradient: tuple[float, float] = (0.0, 0.0)  # (peak-to-peak fraction, direction rad)
    illumination: float = np.nan
    temperature: float = np.nan
    chip_bands: dict = field(default_factory=dict)  # fixed band -> its zero_point, sky, ...

    @property
    def dateobs(self) -> str:
        return Time(self.mjd, format="mjd", scale="utc").isot

    def conditions(self, band: str | None = None) -> dict:
        """``band``, ``zero_point``, ``sky``, ``seeing``, ``illumination`` as seen through
        a chip's fixed ``band`` (None or the frame's band: the frame's own values)."""
        own = {
            "band": self.band,
            "zero_point": self.zero_point,
            "sky": self.sky,
            "seeing": self.seeing,
            "illumination": self.illumination,
        }
        if band is None or band == self.band:
            return own
        return {**own, **self.chip_bands.get(band, {}), "band": band}


def sequence_bands(sc: dict, layouts: list) -> tuple[list[dict], list[str]]:
    """The bands the science and flat sequences step through, and the chips' fixed bands."""
    bands = sc["bands"]
    fixed = list(dict.fromkeys(lay.band for lay in layouts if lay.band))
    if not fixed:
        return bands, []
    names = {b["name"] for b in bands}
    missing = [b for b in fixed if b not in names]
    if missing:
        chips = [lay.name for lay in layouts if lay.band in missing]
        raise ImredError(
            f"scenario: bands has no entry for {', '.join(missing)}, the fixed band of chip(s) "
            f"{', '.join(chips)} (a split detector); add them to bands (zero_point, "
            "sky_mag_arcsec2, ...)"
        )
    wheel = [b for b in bands if b["name"] not in fixed]
    free = [lay.name for lay in layouts if not lay.band]
    if not wheel and free:
        raise ImredError(
            f"scenario: bands lists only the fixed bands of split chips ({', '.join(fixed)}); "
            f"chips {', '.join(free)} take their band from the filter: add a band for them"
        )
    return wheel or [{**bands[0], "name": None}], fixed


def _location(site: dict) -> EarthLocation:
    return EarthLocation.from_geodetic(
        site["longitude_deg"] * u.deg,
        site["latitude_deg"] * u.deg,
        site.get("elevation_m", 0) * u.m,
    )


def _sky_rate(mag_arcsec2: float, zero_point: float, scale: float) -> float:
    """e-/s/pixel of a surface brightness for a zero point (mag for 1 e-/s)."""
    return float(scale**2 * 10 ** (-0.4 * (mag_arcsec2 - zero_point)))


def plan_night(sc: dict, inst: Instrument, layouts: list, frame_prefix: str) -> list[Frame]:
    """All exposures of the night in time order, with their true conditions.

    Parameters
    ----------
    sc : dict
        The completed scenario.
    inst : Instrument
        The camera (its site, rotator convention and header spec).
    layouts : list of ChipLayout
        The chips (pixel scale, gain, saturation set flat exposure times).
    frame_prefix : str
        Frame names are ``{frame_prefix}_{NNNN}`` in time order.
    """
    rng = np.random.default_rng([sc["seed"], PLAN_STREAM])
    obs, cal = sc["observing"], sc["calibrations"]
    site = inst.site
    lon = site["longitude_deg"]
    mjd0 = Time(f"{sc['night']}T00:00:00", scale="utc").mjd
    noon = mjd0 + (12.0 - lon / 15.0) / 24.0
    grid = noon + np.arange(0, 24 * 60 + 1, 5) / (24 * 60)
    times = Time(grid, format="mjd", scale="utc")
    frame = AltAz(obstime=times, location=_location(site))
    sun_alt = get_sun(times).transform_to(frame).alt.deg
    fld = sc["field"]
    target_alt = SkyCoord(fld["ra_deg"] * u.deg, fld["dec_deg"] * u.deg).transform_to(frame).alt.deg
    dark = sun_alt < -12.0
    if not dark.any():
        raise ImredError(
            f"scenario: the sun does not set below -12 deg on {sc['night']} at this site"
        )
    bands, fixed = sequence_bands(sc, layouts)
    all_bands = {b["name"]: b for b in sc["bands"]}
    # sky and twilight rates per raw pixel: binned (observing.binning) pixels are bx x by
    # pixels of pixel_scale; flat levels and exposure times refer to the binned pixel
    bx, by = obs.get("binning", [1, 1])
    scale = float(np.mean([lay.pixel_scale for lay in layouts])) * float(np.sqrt(bx * by))
    gain = float(np.mean([lay.gain for lay in layouts]))
    saturation = float(min(lay.saturation for lay in layouts))
    bias_level = sc["bias"]["level_adu"]
    flat_e = max(cal["flat"]["level"] * saturation - bias_level, 100.0) * gain
    frames: list[Frame] = []

    def add(imagetype, exptime, mjd, **kw) -> Frame:
        f = Frame(index=0, name="", imagetype=imagetype, exptime=float(exptime), mjd=mjd, **kw)
        f.temperature = obs["temperature_c"] + float(rng.normal(0.0, 0.05))
        frames.append(f)
        return f

    # afternoon: biases, darks, dome flats
    t = noon + (obs["calibration_local_time"] - 12.0) / 24.0
    read = obs["readout_s"] / 86400.0
    for _ in range(cal["bias"]["count"]):
        add("bias", 0.0, t, target="bias")
        t += read
    for _ in range(cal["dark"]["count"]):
        add("dark", cal["dark"]["exptime"], t, target="dark")
        t += cal["dark"]["exptime"] / 86400.0 + read
    flat = cal["flat"]
    if flat["kind"] == "dome":
        texp = flat["dome_exptime"]
        for band in bands:
            for _ in range(flat["count"]):
                name = band["name"]
                f = add("flat", texp, t, band=name, target=f"domeflat {name or ''}".strip())
                f.illumination = flat_e / texp * float(1.0 + rng.normal(0.0, 0.003))
                t += texp / 86400.0 + read
    else:  # evening twilight, exposure times adapted to the fading sky
        evening = np.nonzero((sun_alt < flat["twilight_sun_alt"]) & (grid < mjd0 + 1.5))[0]
        if evening.size == 0 or evening[0] == 0:
            raise ImredError(
                f"scenario: the sun does not reach {flat['twilight_sun_alt']} deg in the evening "
                f"of {sc['night']}; use dome flats or another calibrations.flat.twilight_sun_alt"
            )
        i = evening[0]
        frac = (flat["twilight_sun_alt"] - sun_alt[i - 1]) / (sun_alt[i] - sun_alt[i - 1])
        t = float(grid[i - 1] + frac * (grid[i] - grid[i - 1]))
        for band in bands:
            for _ in range(flat["count"]):
                texp = 5.0
                for _ in range(3):
                    alt = float(np.interp(t + texp / 172800.0, grid, sun_alt))
                    mu = band["twilight_mag_arcsec2"] + TWILIGHT_DIMMING * (-4.0 - alt)
                    rate = _sky_rate(mu, band["zero_point"], scale)
                    texp = float(np.clip(round(flat_e / rate, 1), 1.0, 120.0))
                f = add("twilight-flat", texp, t, band=band["name"], target="twilight flat")
                f.illumination = rate
                for name in fixed:
                    b = all_bands[name]
                    mu_b = b["twilight_mag_arcsec2"] + TWILIGHT_DIMMING * (-4.0 - alt)
                    f.chip_bands[name] = {"illumination": _sky_rate(mu_b, b["zero_point"], scale)}
                angle = float(rng.uniform(0, 2 * np.pi))
                f.sky_gradient = (flat["twilight_gradient"], angle)
                t += texp / 86400.0 + read
        tw = [f for f in frames if f.imagetype == "twilight-flat"]
        when = Time([f.mjd for f in tw], format="mjd", scale="utc")
        up = SkyCoord(
            alt=np.full(len(tw), 75.0) * u.deg,
            az=np.full(len(tw), 90.0) * u.deg,
            frame=AltAz(obstime=when, location=_location(site)),
        ).icrs
        for i, f in enumerate(tw):
            f.ra_cmd = f.ra = float(up.ra.deg[i])
            f.dec_cmd = f.dec = float(up.dec.deg[i])

    # the night: dithered science frames, band after band
    n_sci = obs["science_frames_per_band"]
    step = [(b["exptime"] + obs["readout_s"] + obs["overhead_s"]) / 86400.0 for b in bands]
    duration = n_sci * sum(step)
    if obs["start"] == "auto":
        night_grid, night_alt = grid[dark], target_alt[dark]
        best = float(night_grid[np.argmax(night_alt)])
        start = min(
            max(best - duration / 2, night_grid[0]), max(night_grid[-1] - duration, night_grid[0])
        )
    else:
        try:
            start = float(Time(obs["start"], scale="utc").mjd)
        except ValueError:
            raise ImredError(
                f"scenario: observing.start {obs['start']!r} is not an ISO time (or 'auto')"
            ) from None
    dith = sc["dither"]
    offsets = dith["offsets_arcsec"] if dith["enabled"] else [[0.0, 0.0]]
    rot = sc["rotator"]
    spec = inst.header_spec.get("rotator", {})
    header_angle = rot["angle_deg"] if spec.get("keyword") else inst.rotator.get("default_deg", 0.0)
    sign = inst.rotator.get("sign", 1)
    pa_base = sign * header_angle + inst.rotator.get("offset_deg", 0.0)
    t = start
    science: list[Frame] = []
    for band, dt in zip(bands, step, strict=True):
        for i in range(n_sci):
            f = add("science", band["exptime"], t, band=band["name"], target=sc["field"]["name"])
            east, north = offsets[i % len(offsets)]
            err = rng.normal(0.0, dith["pointing_error_arcsec"], 2) if dith["enabled"] else (0, 0)
            f.ra_cmd, f.dec_cmd = (
                float(v) for v in optics.tan_to_sky(east, north, fld["ra_deg"], fld["dec_deg"])
            )
            f.ra, f.dec = (
                float(v)
                for v in optics.tan_to_sky(
                    east + err[0], north + err[1], fld["ra_deg"], fld["dec_deg"]
                )
            )
            f.rotator = header_angle
            f.pa = pa_base + (
                rot["offset_deg"] + rng.normal(0.0, rot["jitter_deg"]) if rot["enabled"] else 0.0
            )
            science.append(f)
            t += dt
    mid = np.array([f.mjd + f.exptime / 172800.0 for f in science])
    am = airmass_at([f.ra for f in science], [f.dec for f in science], mid, site)
    if not np.all(np.isfinite(am)):
        bad = Time(mid[~np.isfinite(am)][0], format="mjd").isot
        raise ImredError(
            f"scenario: field {fld['name']} is below the horizon at {bad}; choose another field, "
            "night or observing.start"
        )
    cloudy = set()
    tr = sc["transparency"]
    if tr["enabled"] and tr["cloudy_frames"]:
        k = min(tr["cloudy_frames"], len(science))
        cloudy = {int(i) for i in rng.choice(len(science), size=k, replace=False)}
    by_name = {b["name"]: b for b in bands}
    see = sc["seeing"]
    for i, (f, x) in enumerate(zip(science, am, strict=True)):
        band = by_name[f.band]
        f.airmass = float(x)
        f.seeing = float(
            see["fwhm_arcsec"]
            * band["seeing_factor"]
            * x ** see["airmass_power"]
            * np.exp(rng.normal(0.0, see["scatter"]))
        )
        if tr["enabled"]:
            trans = float(np.exp(-abs(rng.normal(0.0, tr["scatter"]))))
            if i in cloudy:
                trans = float(min(tr["cloudy_transparency"] * np.exp(rng.normal(0.0, 0.03)), 1.0))
        else:
            trans = 1.0
        f.transparency = trans
        ext = band["extinction"] * x if sc["extinction"]["enabled"] else 0.0
        f.zero_point = float(band["zero_point"] - ext + 2.5 * np.log10(trans))
        if sc["sky"]["enabled"]:
            rate = _sky_rate(band["sky_mag_arcsec2"], band["zero_point"], scale)
            f.sky = rate * float(1.0 + rng.normal(0.0, sc["sky"]["scatter"]))
            f.sky_gradient = (sc["sky"]["gradient"], float(rng.uniform(0, 2 * np.pi)))
        else:
            f.sky = 0.0
    if fixed:  # conditions of the fixed bands: own stream, the frame's atmosphere
        rng_fixed = np.random.default_rng([sc["seed"], PLAN_STREAM, 2])
        for f in science:
            seen = by_name[f.band]
            for name in fixed:
                b = all_bands[name]
                ext = b["extinction"] * f.airmass if sc["extinction"]["enabled"] else 0.0
                sky = 0.0
                if sc["sky"]["enabled"]:
                    rate = _sky_rate(b["sky_mag_arcsec2"], b["zero_point"], scale)
                    sky = rate * float(1.0 + rng_fixed.normal(0.0, sc["sky"]["scatter"]))
                f.chip_bands[name] = {
                    "zero_point": float(b["zero_point"] - ext + 2.5 * np.log10(f.transparency)),
                    "sky": sky,
                    "seeing": f.seeing / seen["seeing_factor"] * b["seeing_factor"],
                }
    frames.sort(key=lambda f: f.mjd)
    for n, f in enumerate(frames, start=1):
        f.index = n
        f.name = f"{frame_prefix}_{n:04d}"
    return frames
