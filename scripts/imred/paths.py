"""The path scheme of imred's products (one place; rules, scripts and the scorer use it).

All paths are relative to the working directory (Snakemake's ``--directory``).
Wildcards: ``{instrument}`` (instrument file name), ``{night}`` (``YYYYMMDD`` of the
evening, a night starts at local noon), ``{chip}`` (chip name from the instrument
file), ``{band}`` (normalised band), ``{frame}`` (frame id: the raw file name without
FITS suffixes, unique per night), ``{target}`` (path-safe target name).

==================  =======================================================================
product             path
==================  =======================================================================
observation log     ``results/{instrument}/obslog.tsv``
raw inspection      ``results/{instrument}/{night}/inspect/{frame}.{chip}.json``
night summary       ``results/{instrument}/{night}/summary.md``
master bias         ``results/{instrument}/{night}/masters/bias.{chip}.fits``
master dark         ``results/{instrument}/{night}/masters/dark.{chip}.fits``
master flat         ``results/{instrument}/{night}/masters/flat.{band}.{chip}.fits``
calibrated frame    ``results/{instrument}/{night}/calibrated/{frame}.{chip}.fits``
frame catalog       ``results/{instrument}/{night}/catalogs/{frame}.{chip}.fits``
coadd               ``results/{instrument}/{night}/coadds/{target}.{band}.fits``
coadd catalog       ``results/{instrument}/{night}/coadds/{target}.{band}.cat.fits``
logs                ``logs/{rule}/{instrument}/{night}/...``
benchmarks          ``benchmarks/{rule}/{instrument}/{night}/...``
==================  =======================================================================

Products not built yet are listed so that the scheme is fixed in one place; the
stages that make them come with their own rules.
"""

OBSLOG = "results/{instrument}/obslog.tsv"
INSPECT = "results/{instrument}/{night}/inspect/{frame}.{chip}.json"
NIGHT_SUMMARY = "results/{instrument}/{night}/summary.md"
MASTER_BIAS = "results/{instrument}/{night}/masters/bias.{chip}.fits"
MASTER_DARK = "results/{instrument}/{night}/masters/dark.{chip}.fits"
MASTER_FLAT = "results/{instrument}/{night}/masters/flat.{band}.{chip}.fits"
CALIBRATED = "results/{instrument}/{night}/calibrated/{frame}.{chip}.fits"
FRAME_CATALOG = "results/{instrument}/{night}/catalogs/{frame}.{chip}.fits"
COADD = "results/{instrument}/{night}/coadds/{target}.{band}.fits"
COADD_CATALOG = "results/{instrument}/{night}/coadds/{target}.{band}.cat.fits"
