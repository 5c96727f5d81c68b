"""Rule night_summary: a Markdown page of one night (see imred.inspect.night_summary)."""

import json
import sys

sys.path.insert(0, snakemake.scriptdir)

from imred.fitsio import write_atomic
from imred.inspect import night_summary
from imred.scripting import run_rule


def main(smk):
    reports = []
    for path in smk.input.reports:
        with open(path) as fh:
            reports.append(json.load(fh))
    text = night_summary(
        smk.wildcards.instrument, smk.wildcards.night, smk.params.rows, reports, smk.params.excluded
    )

    def write(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)

    write_atomic(smk.output[0], write)


run_rule(snakemake, main)
