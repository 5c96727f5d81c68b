"""The installer: idempotent, and a clear apt line (no attempt) when not root."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

import pytest

from conftest import ROOT


def test_second_run_only_checks():
    # `make test` ran setup just before; a run now finds everything in place
    proc = subprocess.run(["bash", "scripts/setup.sh"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout
    assert "installing" not in proc.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the installer as another user")
def test_not_root_prints_the_exact_apt_line_and_stops():
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user to run as")
    # a copy of the installer in which fpack counts as missing
    script = (ROOT / "scripts/setup.sh").read_text()
    script = script.replace("[libcfitsio-bin]=/usr/bin/fpack", "[libcfitsio-bin]=/nonexistent")
    script = script.replace('here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)', f"here={ROOT}")
    proc = subprocess.run(
        ["su", "nobody", "-s", "/bin/bash", "-c", "bash -s"],
        input=script,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "apt-get update && apt-get install -y libcfitsio-bin" in proc.stderr
    assert "as root" in proc.stderr
    assert shutil.which("fpack")  # nothing was removed or installed
