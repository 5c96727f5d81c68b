#!/usr/bin/env bash
# Set up everything imred needs on a Debian machine, idempotently:
#   1. the Debian packages of the external tools (only those missing);
#   2. a virtual environment .venv/ with the pinned Python dependencies
#      (requirements.lock) and imred itself (editable).
# A second run with everything present only checks, and takes seconds.
#
# Environment:
#   IMRED_PYTHON   the Python 3.11+ interpreter for the venv (default: python3)
#   IMRED_VENV     where the venv goes (default: .venv in the repository)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

# Debian package -> a file it installs (to tell whether it is present).
declare -A probe=(
  [source-extractor]=/usr/bin/source-extractor
  [scamp]=/usr/bin/scamp
  [swarp]=/usr/bin/SWarp
  [psfex]=/usr/bin/psfex
  [astrometry.net]=/usr/bin/solve-field
  [astrometry-data-tycho2-08-littleendian]=/usr/share/astrometry/index-tycho2-08.littleendian.fits
  [astrometry-data-tycho2-09-littleendian]=/usr/share/astrometry/index-tycho2-09.littleendian.fits
  [astrometry-data-tycho2-10-19-littleendian]=/usr/share/astrometry/index-tycho2-19.littleendian.fits
  [libcfitsio-bin]=/usr/bin/fpack
)
order=(source-extractor scamp swarp psfex astrometry.net
  astrometry-data-tycho2-08-littleendian astrometry-data-tycho2-09-littleendian
  astrometry-data-tycho2-10-19-littleendian libcfitsio-bin)

missing=()
for pkg in "${order[@]}"; do
  [ -e "${probe[$pkg]}" ] || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "imred setup: these Debian packages are missing: ${missing[*]}" >&2
    echo "imred setup: install them as root, then run this again:" >&2
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "imred setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

py=${IMRED_PYTHON:-python3}
venv=${IMRED_VENV:-$here/.venv}
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "imred setup: '$py' is not Python >= 3.11; set IMRED_PYTHON to one." >&2
  exit 1
fi

stamp="$venv/.imred-stamp"
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "imred setup: tools and $venv are up to date."
  exit 0
fi

echo "imred setup: creating the Python environment in $venv"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -r requirements.lock
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
echo "$want" >"$stamp"
echo "imred setup: done."
