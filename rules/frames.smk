# First light per frame: reference catalog per field, background and sources,
# astrometric solution, zero point and calibrated catalog, the night's frame QA table.


localrules:
    reference_catalog,


rule reference_catalog:
    input:
        refcat_inputs,
    output:
        paths.REFCAT,
    log:
        "logs/reference_catalog/{instrument}/{target}.log",
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    params:
        code=code("reference_catalog.py"),
        field=target_field,
        settings=REFCAT_SETTINGS,
    script:
        "../scripts/reference_catalog.py"


rule detect:
    input:
        paths.CALIBRATED,
    output:
        skysub=paths.SKYSUB,
        sources=paths.SOURCES,
    log:
        "logs/detect/{instrument}/{night}/{frame}.{chip}.log",
    benchmark:
        "benchmarks/detect/{instrument}/{night}/{frame}.{chip}.tsv"
    group:
        "per_frame"
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_per_frame,
        runtime=20,
    params:
        code=code("detect_frame.py"),
        pixel_scale=pixel_scale,
        settings={
            "background": RUN.config["background"],
            "detection": RUN.config["detection"],
            "tools": RUN.config["tools"],
        },
    script:
        "../scripts/detect_frame.py"


rule astrometry:
    input:
        sources=paths.SOURCES,
        refcat=frame_refcat,
    output:
        paths.FRAME_WCS,
    log:
        "logs/astrometry/{instrument}/{night}/{frame}.{chip}.log",
    benchmark:
        "benchmarks/astrometry/{instrument}/{night}/{frame}.{chip}.tsv"
    group:
        "per_frame"
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=20,
    params:
        code=code("solve_frame.py"),
        row=frame_row,
        optics=optics_spec,
        mag_column=band_mag_column,
        settings=RUN.config["astrometry"],
        tools=RUN.config["tools"],
    script:
        "../scripts/solve_frame.py"


rule photometry:
    input:
        skysub=paths.SKYSUB,
        sources=paths.SOURCES,
        wcs=paths.FRAME_WCS,
        refcat=frame_refcat,
    output:
        catalog=paths.FRAME_CATALOG,
        zp=paths.FRAME_ZP,
    log:
        "logs/photometry/{instrument}/{night}/{frame}.{chip}.log",
    group:
        "per_frame"
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_per_frame,
        runtime=20,
    params:
        code=code("frame_photometry.py"),
        mag_column=band_mag_column,
        settings=RUN.config["photometry"],
    script:
        "../scripts/frame_photometry.py"


rule frame_qa:
    input:
        sources=frame_products(paths.SOURCES),
        wcs=frame_products(paths.FRAME_WCS),
        zp=frame_products(paths.FRAME_ZP),
    output:
        paths.FRAME_QA,
    log:
        "logs/frame_qa/{instrument}/{night}.log",
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    params:
        code=code("frame_qa.py"),
        rows=night_science_rows,
    script:
        "../scripts/frame_qa.py"
