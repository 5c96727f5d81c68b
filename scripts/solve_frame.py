"""Rule astrometry: the WCS of a frame x chip (see imred.frames.solve_frame)."""

import logging
import sys

sys.path.insert(0, snakemake.scriptdir)

from astropy.table import Table
from imred.astrometry import write_wcs
from imred.frames import solve_frame
from imred.instrument import load_instrument
from imred.products import provenance_cards
from imred.scripting import run_rule


def main(smk):
    row = smk.params.row
    sources = Table.read(smk.input.sources)
    refcat = Table.read(smk.input.refcat)
    shape = (int(sources.meta["NY"]), int(sources.meta["NX"]))
    settings = dict(smk.params.settings) | {"mag_column": smk.params.mag_column}
    if settings["mag_column"] not in refcat.colnames:
        settings["mag_column"] = None
    _, result = solve_frame(
        sources, refcat, row, load_instrument(row["instrument"]), shape, settings,
        tools=dict(smk.params.tools),
    )  # fmt: skip
    if not result.ok:
        logging.getLogger("imred.astrometry").warning(
            "%s chip %s: no astrometric solution (%s); the frame is left out of coadds",
            row["frame"], row["chip"], result.reason,
        )  # fmt: skip
    cards = result.header_cards() + provenance_cards(
        settings=settings, inputs=[smk.input.sources, smk.input.refcat]
    )
    write_wcs(smk.output[0], result.wcs, cards)


run_rule(snakemake, main)
