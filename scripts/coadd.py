"""Rule coadd: the frames of a target and band of a night on one grid (see imred.coadd)."""

import logging
import sys

sys.path.insert(0, snakemake.scriptdir)

from imred.astrometry import wcs_header
from imred.coadd import coadd_frames, coadd_header, select_inputs
from imred.errors import ImredError
from imred.products import write_image_product
from imred.scripting import run_rule


def main(smk):
    w = smk.wildcards
    members = [
        m | {"skysub": s, "wcs": c, "zp": z}
        for m, s, c, z in zip(
            smk.params.members, smk.input.skysub, smk.input.wcs, smk.input.zp, strict=True
        )
    ]
    settings = smk.params.settings
    inputs, excluded = select_inputs(members, settings["max_zero_point_offset"])
    log = logging.getLogger("imred.coadd")
    for label, reason in excluded:
        log.warning("%s %s night %s: %s left out: %s", w.target, w.band, w.night, label, reason)
    if not inputs:
        raise ImredError(
            f"no coadd for target {w.target} band {w.band} night {w.night}: every frame is "
            "left out (" + "; ".join(f"{label}: {why}" for label, why in excluded) + ")"
        )
    result = coadd_frames(inputs, settings, swarp=smk.params.swarp, threads=smk.threads)
    header = coadd_header(
        result, inputs, excluded, settings,
        {"instrument": w.instrument, "night": w.night, "target": w.target, "band": w.band},
    )  # fmt: skip
    write_image_product(
        smk.output[0], header, result.sci, var=result.var, mask=result.mask,
        sci_header=wcs_header(result.wcs), extra={"WHT": result.weight, "EXP": result.exposure},
    )  # fmt: skip
    log.info("%s %s: %d frames x chips, %d left out", w.target, w.band, len(inputs), len(excluded))


run_rule(snakemake, main)
