"""The ``imred`` command: observation logs, the simulator, checks.

``imred obslog INSTRUMENT RAW_DIR... [-o LOG]``
    scan raw folders and write (or update) the observation log; print a summary.
``imred simulate SCENARIO --out DIR [--seed N] [--small]``
    write a simulated raw night with its truth folder.
``imred score RESULTS TRUTH [--json OUT] [--markdown OUT]``
    measure a results folder against a simulated night's truth folder.
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
