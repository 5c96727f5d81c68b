"""The path scheme of imred's products (one place; rules, scripts and the scorer use it).

All paths are relative to the working directory (Snakemake's ``--directory``).
Wildcards: ``{instrument}`` (instrument file name), ``{night}`` (``YYYYMMDD`` of the
evening, a night starts at local noon), ``{chip}`` (chip name from the instrument
file), ``{band}`` (normalised band), ``{frame}`` (frame id: the raw file name without
FITS suffixes, unique per night), ``{target}`` (path-safe target name), ``{setup}``
(binning and readout mode, ``1x1_normal``: masters are made per setup).

==================  =======================================================================
product             path
==================  =======================================================================
observation log     ``results/{instrument}/obslog.tsv``
raw inspection      ``results/{instrument}/{night}/inspect/{frame}.{chip}.json``
night summary       ``results/{instrument}/{night}/summary.md``
master bias         ``results/{instrument}/{night}/masters/bias.{chip}.{setup}.fits``
master dark         ``results/{instrument}/{night}/masters/dark.{chip}.{setup}.fits``
master flat         ``results/{instrument}/{night}/masters/flat.{band}.{chip}.{setup}.fits``
calibrated frame    ``results/{instrument}/{night}/calibrated/{frame}.{chip}.fits``
master QA table     ``results/{instrument}/{night}/masters/qa.ecsv``
reference catalog   ``results/{instrument}/refcat/{target}.fits``
frame WCS           ``results/{instrument}/{night}/astrometry/{frame}.{chip}.wcs.fits``
sky-subtracted      ``results/{instrument}/{night}/skysub/{frame}.{chip}.fits``
detected sources    ``results/{instrument}/{night}/sources/{frame}.{chip}.fits``
frame zero point    ``results/{instrument}/{night}/photometry/{frame}.{chip}.json``
frame catalog       ``results/{instrument}/{night}/catalogs/{frame}.{chip}.fits``
frame QA table      ``results/{instrument}/{night}/qa/frames.ecsv``
coadd               ``results/{instrument}/{night}/coadds/{target}.{band}.fits``
coadd catalog       ``results/{instrument}/{night}/coadds/{target}.{band}.cat.fits``
logs                ``logs/{rule}/{instrument}/{night}/...``
benchmarks          ``benchmarks/{rule}/{instrument}/{night}/...``
==================  =======================================================================

Products not built yet are listed so that the scheme is fixed in one place; the
stages that make them come with their own rules. Formats: image products are
described in :mod:`imred.products`. A frame WCS file is a FITS file whose empty
primary HDU's header holds the solved WCS of the chip's trimmed grid (one
convention: TAN-SIP). A catalog is a FITS binary table with at least ``ra``, ``dec``
(deg, ICRS), ``mag``, ``mag_err`` (calibrated, in the band of the product),
``x``, ``y`` (0-based pixel of the product's grid) and ``flags`` (imred.detect.Flag; 0 is
clean, bits 4 SATURATED, 8 EDGE and 16 MASKED say the measurement is compromised). The frame QA table
has one row per frame x chip with at least ``frame``, ``chip``, ``band``,
``fwhm_arcsec``, ``zero_point`` (mag of 1 e-/s), ``zero_point_err``,
``astrometric_rms_arcsec``, ``n_sources`` and ``flags``.
"""

OBSLOG = "results/{instrument}/obslog.tsv"
INSPECT = "results/{instrument}/{night}/inspect/{frame}.{chip}.json"
NIGHT_SUMMARY = "results/{instrument}/{night}/summary.md"
MASTER_BIAS = "results/{instrument}/{night}/masters/bias.{chip}.{setup}.fits"
MASTER_DARK = "results/{instrument}/{night}/masters/dark.{chip}.{setup}.fits"
MASTER_FLAT = "results/{instrument}/{night}/masters/flat.{band}.{chip}.{setup}.fits"
CALIBRATED = "results/{instrument}/{night}/calibrated/{frame}.{chip}.fits"
MASTER_QA = "results/{instrument}/{night}/masters/qa.ecsv"
REFCAT = "results/{instrument}/refcat/{target}.fits"
FRAME_WCS = "results/{instrument}/{night}/astrometry/{frame}.{chip}.wcs.fits"
SKYSUB = "results/{instrument}/{night}/skysub/{frame}.{chip}.fits"
SOURCES = "results/{instrument}/{night}/sources/{frame}.{chip}.fits"
FRAME_ZP = "results/{instrument}/{night}/photometry/{frame}.{chip}.json"
FRAME_QA = "results/{instrument}/{night}/qa/frames.ecsv"
FRAME_CATALOG = "results/{instrument}/{night}/catalogs/{frame}.{chip}.fits"
COADD = "results/{instrument}/{night}/coadds/{target}.{band}.fits"
COADD_CATALOG = "results/{instrument}/{night}/coadds/{target}.{band}.cat.fits"
