"""Rule detect: background and sources of a calibrated frame (see imred.frames.detect_frame)."""

import sys

sys.path.insert(0, snakemake.scriptdir)

from imred.fitsio import write_atomic
from imred.frames import detect_frame
from imred.products import write_image_product
from imred.scripting import run_rule


def main(smk):
    skysub, header, catalog, _ = detect_frame(
        smk.input[0], smk.params.settings, smk.params.pixel_scale
    )
    write_image_product(
        smk.output.skysub, header, skysub["SCI"], var=skysub["VAR"], mask=skysub["MASK"],
        unit="electron", extra={"BKG": skysub["BKG"]},
    )  # fmt: skip
    write_atomic(smk.output.sources, lambda tmp: catalog.write(tmp, format="fits"))


run_rule(snakemake, main)
