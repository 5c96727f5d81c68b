"""Rule frame_qa: one row per frame x chip of a night (see imred.frames.frame_qa_table)."""

import json
import sys

sys.path.insert(0, snakemake.scriptdir)

from astropy.io import fits
from astropy.table import Table
from imred.fitsio import write_atomic
from imred.frames import frame_qa_table
from imred.scripting import run_rule


def main(smk):
    entries = []
    for row, src, wcs, zp_path in zip(
        smk.params.rows, smk.input.sources, smk.input.wcs, smk.input.zp, strict=True
    ):
        meta = Table.read(src).meta
        head = fits.getheader(wcs)
        with open(zp_path) as fh:
            zp = json.load(fh)
        flags = [f for f in str(meta.get("QAFLAGS", "")).split("; ") if f]
        if not head.get("ASTOK"):
            flags.append(f"astrometry: {head.get('ASTREAS')}")
        if not zp.get("ok"):
            flags.append(f"zero point: {zp.get('reason')}")
        entries.append(
            {
                "frame": row["frame"], "chip": row["chip"], "band": row.get("band") or "",
                "target": row.get("target") or "", "airmass": row.get("airmass"),
                "exptime": row.get("exptime"), "fwhm_arcsec": meta.get("FWHM"),
                "ellipticity": meta.get("ELLIP"), "n_sources": meta.get("NSOURCE"),
                "sky": meta.get("SKY"), "sky_rms": meta.get("SKYRMS"),
                "astrometric_rms_arcsec": head.get("ASTRMS"),
                "astrometry_matches": head.get("ASTNMAT"),
                "zero_point": zp.get("zero_point"), "zero_point_err": zp.get("zero_point_err"),
                "zero_point_stars": zp.get("n_stars"), "flags": "; ".join(flags),
            }
        )  # fmt: skip
    table = frame_qa_table(entries)
    write_atomic(smk.output[0], lambda tmp: table.write(tmp, format="ascii.ecsv"))


run_rule(snakemake, main)
