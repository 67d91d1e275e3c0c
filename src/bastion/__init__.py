"""Bastion: an open antivirus engine.

The package reads as the data flow:

    signatures/  parse signature sources (one module per format) into one model
    database/    compile the model into matcher state + hash tables; cache, load by mmap
    engine/      take an object plus its file type, return verdicts with evidence
    unpack/      turn one object into child objects (interface; plug-ins come later)
    formats/     executable parsers the engine needs for EP/section offsets
    cli/         front ends: `bastion` and `bastion-clamscan`; they only call the engine and render
"""

__version__ = "0.1.0"

# The ClamAV functionality level (FL) Bastion claims.  Signatures carry min/max FL fields and
# load only when min <= FUNCTIONALITY_LEVEL <= max.  216 is what Debian's ClamAV 1.4.6 reports,
# the peer our compatibility tests run against.
FUNCTIONALITY_LEVEL = 216

# The ClamAV engine version whose behaviour bastion-clamscan reproduces.
CLAMAV_COMPAT_VERSION = "1.4.6"
