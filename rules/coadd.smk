# Coadds: the solved frames of a target and band of a night, resampled onto one grid
# at a common zero point, and the coadd's calibrated source catalog.


rule coadd:
    input:
        unpack(coadd_inputs),
    output:
        paths.COADD,
    log:
        "logs/coadd/{instrument}/{night}/{target}.{band}.log",
    benchmark:
        "benchmarks/coadd/{instrument}/{night}/{target}.{band}.tsv"
    conda:
        "../envs/python.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb_coadd,
        runtime=60,
    params:
        code=code("coadd.py"),
        members=coadd_members,
        swarp=RUN.config["tools"]["swarp"],
        settings=COADD,
    script:
        "../scripts/coadd.py"


rule coadd_catalog:
    input:
        coadd=paths.COADD,
        refcat=coadd_refcat,
    output:
        paths.COADD_CATALOG,
    log:
        "logs/coadd_catalog/{instrument}/{night}/{target}.{band}.log",
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_coadd,
        runtime=30,
    params:
        code=code("coadd_catalog.py"),
        mag_column=coadd_mag_column,
        settings={
            "background": RUN.config["background"],
            "detection": RUN.config["detection"],
            "photometry": RUN.config["photometry"],
            "tools": RUN.config["tools"],
        },
    script:
        "../scripts/coadd_catalog.py"
