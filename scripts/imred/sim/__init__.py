"""Building blocks of the raw-night simulator (:mod:`imred.simulate` is the entry point).

* :mod:`imred.sim.headers`  - write normalised values through an instrument's header spec
* :mod:`imred.sim.optics`   - chip layout, focal plane, true TAN-SIP WCS, Moffat stars
* :mod:`imred.sim.detector` - bias, dark, flat, bad columns, cosmic rays, read-out
* :mod:`imred.sim.catalog`  - synthetic star catalog and the reference catalog
"""
