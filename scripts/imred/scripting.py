"""Run a rule script: log to the rule's log file, turn user errors into one line.

Rule scripts in ``scripts/`` are thin: they read ``snakemake.input``/``params``,
call one library function and write ``snakemake.output``. :func:`run_rule` gives
them the same behaviour: messages go to the rule's ``log:`` file (and stderr), an
:class:`~imred.errors.ImredError` ends the job with its message and no traceback,
and outputs are removed on failure so that no half-written product survives.
This module does not import snakemake; it receives the object Snakemake injects.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import ImredError


def run_rule(smk, main: Callable[[object], None]) -> None:
    """Call ``main(smk)`` with logging set up from ``smk.log``; exit 1 on a user error."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if smk.log:
        Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(smk.log[0], mode="w"))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    log = logging.getLogger(f"imred.{smk.rule}")
    try:
        main(smk)
    except ImredError as err:
        log.error("%s", err)
        for out in smk.output:
            Path(out).unlink(missing_ok=True)
        sys.exit(1)
