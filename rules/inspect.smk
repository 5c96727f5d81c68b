# Raw inspection: the first look at every frame x chip, and a summary page per night.


rule inspect:
    input:
        raw=raw_path,
    output:
        paths.INSPECT,
    log:
        "logs/inspect/{instrument}/{night}/{frame}.{chip}.log",
    benchmark:
        "benchmarks/inspect/{instrument}/{night}/{frame}.{chip}.tsv"
    group:
        "per_frame"
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_per_frame,
        runtime=10,
    params:
        code=code("inspect_chip.py"),
        row=frame_row,
        chip=chip_spec,
        settings=RUN.config["inspect"],
    script:
        "../scripts/inspect_chip.py"


rule night_summary:
    input:
        reports=night_inspections,
    output:
        paths.NIGHT_SUMMARY,
    log:
        "logs/night_summary/{instrument}/{night}.log",
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=512,
        runtime=10,
    params:
        code=code("night_summary.py"),
        rows=night_rows,
        excluded=night_excluded,
    script:
        "../scripts/night_summary.py"
