"""Unpackers for executables compressed by a PE packer (UPX, WWPack32, Petite, ASPack): one module per packer or
compression algorithm; :mod:`bastion.unpack.pe_packers` is the plug-in that runs them.

A packer module looks at a :class:`~bastion.unpack.packers.pe.PackedPe` and returns an
:class:`~bastion.unpack.packers.pe.Unpacked` memory image, None when the file is not its packer's, or
raises :class:`~bastion.unpack.packers.pe.PackerError` for a packed file it cannot unpack (damaged
data, a limit).  Unpacking only decodes the compressed data; the packer's stub is never run.
"""
