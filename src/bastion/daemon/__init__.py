"""The daemon front end: ClamAV's clamd protocol on a unix and/or TCP socket (``bastion daemon``,
``bastion-clamd``).  It only calls the engine and the database layer, and renders replies."""
