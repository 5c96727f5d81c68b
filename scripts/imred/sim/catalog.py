"""The synthetic star catalog and the reference catalog made from it.

Stars are spread uniformly over a disc on the sky. Their reference-band magnitudes
follow power-law number counts, ``N(< m) = density_at_20 * 10**(slope (m - 20))`` per
deg^2; their colours ``x = g - r`` are a mixture of turn-off stars (``x ~ 0.42``) and
M dwarfs (``x ~ 1.40``), and the magnitude in band b is
``m_b = m_ref + P_b(x) - P_ref(x)`` with the scenario's colour polynomials ``P``.

The reference catalog is what a survey query would return: stars between a bright
(saturation) and a faint limit in the reference band, magnitudes drawn about the
truth with errors ``sqrt(floor^2 + (1.0857 / snr)^2)`` (``snr = 5`` at ``depth_5sigma``),
and positions scattered by an error that grows for faint stars.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..errors import ImredError
from .optics import tan_to_sky


def colour_polynomials(stars: dict, bands: list[str]) -> dict[str, np.ndarray]:
    """Colour polynomial of each catalog band; the observed bands must be among them."""
    table = {c["band"]: np.asarray(c["terms"], dtype=float) for c in stars["colours"]}
    missing = [b for b in [*bands, stars["reference_band"]] if b not in table]
    if missing:
        raise ImredError(
            f"scenario: stars.colours has no entry for band(s) {', '.join(sorted(set(missing)))}; "
            "add {band: NAME, terms: [c0, c1, c2]} (m = m_ref + c0 + c1 (g-r) + c2 (g-r)^2)"
        )
    return table


def make_star_catalog(
    stars: dict, ra0: float, dec0: float, radius_arcsec: float, rng: np.random.Generator
) -> Table:
    """Synthetic stars within ``radius_arcsec`` of (ra0, dec0).

    Returns a table with ``id``, ``ra``, ``dec`` (deg), ``gr`` (g - r colour) and
    ``{band}_mag`` for every band of ``stars.colours``.
    """
    polys = colour_polynomials(stars, [])
    area_deg2 = np.pi * (radius_arcsec / 3600.0) ** 2
    m1, m2 = sorted(stars["magnitudes"])
    s = stars["slope"]
    expected = stars["density_at_20"] * area_deg2 * (10 ** (s * (m2 - 20)) - 10 ** (s * (m1 - 20)))
    n = int(rng.poisson(expected)) if stars["enabled"] else 0
    if n > 2_000_000:
        raise ImredError(
            f"scenario: the star counts give {n} stars in the field; lower stars.density_at_20 "
            "or the faint end of stars.magnitudes"
        )
    if s > 0:
        lo, hi = 10 ** (s * m1), 10 ** (s * m2)
        mag = np.log10(lo + rng.uniform(0.0, 1.0, n) * (hi - lo)) / s
    else:
        mag = rng.uniform(m1, m2, n)
    rad = radius_arcsec * np.sqrt(rng.uniform(0.0, 1.0, n))
    ang = rng.uniform(0.0, 2 * np.pi, n)
    ra, dec = tan_to_sky(rad * np.sin(ang), rad * np.cos(ang), ra0, dec0)
    red = rng.uniform(0.0, 1.0, n) < stars["red_fraction"]
    gr = np.where(red, rng.normal(1.40, 0.10, n), rng.normal(0.42, 0.12, n))
    gr = np.clip(gr, -0.3, 1.8)
    table = Table()
    table["id"] = np.arange(1, n + 1, dtype=np.int64)
    table["ra"] = ra
    table["dec"] = dec
    table["ra"].unit = table["dec"].unit = "deg"
    table["gr"] = gr
    ref = stars["reference_band"]
    p_ref = np.polyval(polys[ref][::-1], gr)
    for band, poly in polys.items():
        table[f"{band}_mag"] = mag + np.polyval(poly[::-1], gr) - p_ref
        table[f"{band}_mag"].unit = "mag"
    table.meta["REFBAND"] = ref
    return table


def make_refcat(
    stars_table: Table,
    refcat: dict,
    reference_band: str,
    bands: list[str],
    rng: np.random.Generator,
) -> Table:
    """The pipeline's reference catalog drawn from the truth (see the module docstring).

    Columns: ``source_id``, ``ra``, ``dec`` (deg), ``ra_err``, ``dec_err`` (mas) and
    ``{band}_mag``, ``{band}_err`` (mag) for every catalog band.
    """
    ref = np.asarray(stars_table[f"{reference_band}_mag"])
    keep = (ref > refcat["bright_limit"]) & (ref < refcat["mag_limit"])
    sub = stars_table[keep]
    n = len(sub)
    ref = ref[keep]
    pos_err = refcat["position_error_mas"] * np.sqrt(1.0 + 10 ** (0.8 * (ref - 19.0)))
    dec = np.asarray(sub["dec"]) + rng.normal(0.0, 1.0, n) * pos_err / 3.6e6
    cosd = np.cos(np.radians(dec))
    ra = (np.asarray(sub["ra"]) + rng.normal(0.0, 1.0, n) * pos_err / 3.6e6 / cosd) % 360.0
    out = Table()
    out["source_id"] = np.asarray(sub["id"], dtype=np.int64)
    out["ra"] = ra
    out["dec"] = dec
    out["ra"].unit = out["dec"].unit = "deg"
    out["ra_err"] = pos_err
    out["dec_err"] = pos_err
    out["ra_err"].unit = out["dec_err"].unit = "mas"
    for band in bands:
        true = np.asarray(sub[f"{band}_mag"])
        snr = 5.0 * 10 ** (-0.4 * (true - refcat["depth_5sigma"]))
        err = np.sqrt(refcat["error_floor"] ** 2 + (1.0857 / snr) ** 2)
        out[f"{band}_mag"] = true + rng.normal(0.0, 1.0, n) * err
        out[f"{band}_err"] = err
        out[f"{band}_mag"].unit = out[f"{band}_err"].unit = "mag"
    out.meta["CATALOG"] = "imred simulated reference catalogue"
    out.meta["REFBAND"] = reference_band
    out.meta["MAGLIM"] = refcat["mag_limit"]
    out.meta["BRIGHTLM"] = refcat["bright_limit"]
    out.meta["DEPTH5S"] = refcat["depth_5sigma"]
    return out
