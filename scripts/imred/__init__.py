"""imred: reduce raw optical and near-infrared imaging nights.

The library behind the Snakemake workflow. It never imports snakemake: rule
scripts in ``scripts/`` read their inputs, call one function here, and write.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("imred")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.1.0+source"

from .errors import ImredError

__all__ = ["ImredError", "__version__"]
