# imred: reduce raw optical/NIR imaging nights. See README.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/inspect.smk"
include: "rules/calib.smk"
include: "rules/frames.smk"
include: "rules/coadd.smk"


rule all:
    default_target: True
    input:
        all_targets(),
