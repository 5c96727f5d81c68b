"""Rule coadd_catalog: sources of a coadd, calibrated against the catalog (see imred.coadd)."""

import sys

sys.path.insert(0, snakemake.scriptdir)

from astropy.table import Table
from imred.coadd import coadd_catalog
from imred.fitsio import write_atomic
from imred.products import provenance_cards
from imred.scripting import run_rule


def main(smk):
    refcat = Table.read(smk.input.refcat)
    column = smk.params.mag_column if smk.params.mag_column in refcat.colnames else None
    catalog = coadd_catalog(smk.input.coadd, refcat, column, smk.params.settings)
    for key, value, _ in provenance_cards(
        settings=smk.params.settings, inputs=[smk.input.coadd, smk.input.refcat]
    ):
        catalog.meta[key] = value
    write_atomic(smk.output[0], lambda tmp: catalog.write(tmp, format="fits"))


run_rule(snakemake, main)
