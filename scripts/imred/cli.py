"""The ``imred`` command: observation logs, the simulator, checks.

``imred obslog INSTRUMENT RAW_DIR... [-o LOG]``
    scan raw folders and write (or update) the observation log; print a summary.
``imred simulate SCENARIO --out DIR [--seed N] [--small]``
    write a simulated raw night with its truth folder.
``imred score RESULTS TRUTH [--json OUT] [--markdown OUT]``
    measure a results folder against a simulated night's truth folder.
``imred nonlinearity-cube READ... --time-keyword KW --out CUBE [--linear-max ADU]``
    build a per-pixel non-linearity coefficient cube from an up-the-ramp series.
``imred check [CONFIG]``
    validate a config file and every instrument file it names.

User errors print one line (``imred: ...``) and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, paths
from .errors import ImredError


def _obslog(args) -> int:
    from .instrument import load_instrument
    from .obslog import format_summary, update_obslog

    inst = load_instrument(args.instrument)
    out = args.output or paths.OBSLOG.format(instrument=inst.name)
    rows, stats = update_obslog(inst, args.raw, out, force=args.force)
    print(format_summary(rows))
    print(
        f"imred: wrote {out} ({len(rows)} rows; {stats['read']} files read, "
        f"{stats['kept']} unchanged, {stats['removed']} removed)"
    )
    return 0


def _simulate(args) -> int:
    from . import simulate

    argv = [args.scenario, "--out", args.out]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if args.small:
        argv.append("--small")
    return simulate.main(argv)


def _score(args) -> int:
    from . import score

    argv = [args.results, args.truth]
    for flag, value in (("--json", args.json), ("--markdown", args.markdown)):
        if value:
            argv += [flag, value]
    return score.main(argv)


def _nonlinearity_cube(args) -> int:
    import numpy as np
    from astropy.io import fits

    from .fitsio import read_chip, write_atomic
    from .nir import build_nonlinearity_cube

    reads, times = [], []
    for path in args.reads:
        data, header = read_chip(path, args.extension)
        if args.time_keyword not in header:
            with fits.open(path) as hdul:
                header = hdul[0].header
        if args.time_keyword not in header:
            raise ImredError(
                f"{path}: no keyword {args.time_keyword} (the read's time since reset)"
            )
        reads.append(data)
        times.append(float(header[args.time_keyword]))
    order = np.argsort(times)
    stack = np.stack([reads[i] for i in order]).astype(np.float32)
    cube, bad = build_nonlinearity_cube(
        stack,
        [times[i] for i in order],
        linear_max_adu=args.linear_max,
        fit_range=(args.fit_min, args.fit_max),
        order=args.order,
    )
    primary = fits.PrimaryHDU(cube.astype(np.float32))
    primary.header["IMRTYPE"] = ("NLCUBE", "plane k multiplies data**k")
    primary.header["NREADS"] = (len(args.reads), "reads used")
    hdul = fits.HDUList([primary, fits.ImageHDU(bad.astype(np.uint8), name="BAD")])
    write_atomic(args.out, lambda tmp: hdul.writeto(tmp))
    print(
        f"imred: wrote {args.out} ({int(bad.sum())} pixels flagged bad); name it in the "
        "instrument file as detector.nonlinearity.coefficient_cube"
    )
    return 0


def _check(args) -> int:
    from .config import load_config
    from .instrument import load_instrument
    from .schema import read_yaml

    cfg = load_config(read_yaml(args.config, "config file"), str(args.config))
    for name, spec in cfg["instruments"].items():
        inst = load_instrument(spec.get("instrument_file", name))
        print(f"imred: instrument {name}: {inst.source} is valid ({len(inst.chips)} chips)")
    print(f"imred: {args.config} is valid")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imred", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"imred {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("obslog", help="scan raw folders and write the observation log")
    p.add_argument("instrument", help="instrument name (config/instruments/NAME.yaml) or file")
    p.add_argument("raw", nargs="+", help="raw folders, searched recursively")
    p.add_argument("-o", "--output", help=f"log path (default {paths.OBSLOG})")
    p.add_argument("--force", action="store_true", help="re-read every file")
    p.set_defaults(func=_obslog)

    p = sub.add_parser("simulate", help="write a simulated raw night and its truth")
    p.add_argument("scenario", help="scenario file (e.g. config/scenarios/demo.yaml)")
    p.add_argument("--out", required=True, help="output folder (raw/ and truth/ go inside)")
    p.add_argument("--seed", type=int, help="random seed (default: the scenario's)")
    p.add_argument("--small", action="store_true", help="a small, fast variant for tests")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("score", help="score a results folder against a simulated truth")
    p.add_argument("results", help="results folder (or the working folder holding results/)")
    p.add_argument("truth", help="the simulator's truth folder")
    p.add_argument("--json", help="write the scores as JSON here")
    p.add_argument("--markdown", help="write the Markdown tables here")
    p.set_defaults(func=_score)

    p = sub.add_parser(
        "nonlinearity-cube", help="per-pixel non-linearity cube from an up-the-ramp series"
    )
    p.add_argument("reads", nargs="+", help="the reads (FITS files), any order")
    p.add_argument("--time-keyword", default="INTTIME", help="time since reset (s) keyword")
    p.add_argument("--extension", default="0", help="extension holding the image")
    p.add_argument("--out", required=True, help="output FITS cube")
    p.add_argument("--linear-max", type=float, default=10000.0, help="ADU still linear")
    p.add_argument("--fit-min", type=float, default=2500.0)
    p.add_argument("--fit-max", type=float, default=40000.0)
    p.add_argument("--order", type=int, default=3)
    p.set_defaults(func=_nonlinearity_cube)

    p = sub.add_parser("check", help="validate a config file and its instrument files")
    p.add_argument("config", nargs="?", default=Path("config/config.yaml"), type=Path)
    p.set_defaults(func=_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ImredError as err:
        print(f"imred: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
