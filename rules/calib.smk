# Calibration: masters (bias, dark, flat per band) per night x chip x setup, master QA,
# and per-frame calibration to electrons with variance and bitmask.


rule master_bias:
    input:
        raw=master_raw("bias"),
    output:
        paths.MASTER_BIAS,
    log:
        "logs/master_bias/{instrument}/{night}/{chip}.{setup}.log",
    benchmark:
        "benchmarks/master_bias/{instrument}/{night}/{chip}.{setup}.tsv"
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_master("bias"),
        runtime=30,
    params:
        code=code("master_bias.py"),
        rows=master_rows("bias"),
        chip=chip_spec,
        detector=detector_spec,
        settings=calib_settings("overscan", "reference_pixels", "combine"),
    script:
        "../scripts/master_bias.py"


rule master_dark:
    input:
        unpack(master_needs(("bias",))),
        raw=master_raw("dark"),
    output:
        paths.MASTER_DARK,
    log:
        "logs/master_dark/{instrument}/{night}/{chip}.{setup}.log",
    benchmark:
        "benchmarks/master_dark/{instrument}/{night}/{chip}.{setup}.tsv"
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_master("dark"),
        runtime=30,
    params:
        code=code("master_dark.py"),
        rows=master_rows("dark"),
        chip=chip_spec,
        detector=detector_spec,
        settings=calib_settings(
            "overscan", "reference_pixels", "nonlinearity", "combine", "dark"
        ),
    script:
        "../scripts/master_dark.py"


rule master_flat:
    input:
        unpack(master_needs(("bias", "dark"))),
        raw=master_raw("flat"),
    output:
        paths.MASTER_FLAT,
    log:
        "logs/master_flat/{instrument}/{night}/{band}.{chip}.{setup}.log",
    benchmark:
        "benchmarks/master_flat/{instrument}/{night}/{band}.{chip}.{setup}.tsv"
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_master("flat"),
        runtime=30,
    params:
        code=code("master_flat.py"),
        rows=master_rows("flat"),
        chip=chip_spec,
        detector=detector_spec,
        limits=flat_limits,
        settings=calib_settings(
            "overscan",
            "reference_pixels",
            "nonlinearity",
            "combine",
            "flat",
            "bad_pixels",
        ),
    script:
        "../scripts/master_flat.py"


rule master_qa:
    input:
        night_master_files,
    output:
        paths.MASTER_QA,
    log:
        "logs/master_qa/{instrument}/{night}.log",
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=1024,
        runtime=10,
    params:
        code=code("master_qa.py"),
        masters=night_master_list,
        parameters=instrument_parameters,
        settings=calib_settings("qa"),
    script:
        "../scripts/master_qa.py"


rule calibrate:
    input:
        unpack(calibrate_inputs),
    output:
        paths.CALIBRATED,
    log:
        "logs/calibrate/{instrument}/{night}/{frame}.{chip}.log",
    benchmark:
        "benchmarks/calibrate/{instrument}/{night}/{frame}.{chip}.tsv"
    group:
        "per_frame"
    conda:
        "../envs/python.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_calibrate,
        runtime=20,
    params:
        code=code("calibrate.py"),
        row=frame_row,
        chip=chip_spec,
        detector=detector_spec,
        regions=user_regions,
        settings=calib_settings(
            "overscan", "reference_pixels", "nonlinearity", "cosmic_rays", "bad_pixels"
        ),
    script:
        "../scripts/calibrate.py"
