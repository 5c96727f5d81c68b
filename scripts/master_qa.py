"""Rule master_qa: one table of the night's masters (see imred.masters.master_qa_table)."""

import sys

sys.path.insert(0, snakemake.scriptdir)

from imred.fitsio import write_atomic
from imred.masters import master_qa_table
from imred.scripting import run_rule


def main(smk):
    table = master_qa_table(smk.params.masters, smk.params.parameters, smk.params.settings["qa"])
    write_atomic(smk.output[0], lambda tmp: table.write(tmp, format="ascii.ecsv"))


run_rule(snakemake, main)
