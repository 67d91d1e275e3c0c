"""Defanging: a quarantined file is stored encrypted with a key local to this quarantine, so that no
other scanner, indexer or double-click can open or run it, and any change to the stored bytes is
detected when it is read back.

Format of one vault file (chunked AES-256-GCM, the "STREAM" construction)::

    header:  b"BQV1" | nonce prefix (8 random bytes) | chunk size (uint32, big-endian)
    chunks:  AES-GCM(plaintext chunk) | 16-byte tag, each chunk but the last exactly ``chunk size``

Chunk ``i`` uses nonce ``prefix || i`` (uint32) and authenticates ``header || i || last?``, so
chunks cannot be reordered, dropped, or the file truncated at a chunk boundary without the read
failing.  An empty file is one empty final chunk.  Files of any size stream through in 1 MiB
pieces; nothing is ever decrypted except into the caller's file object.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"BQV1"
CHUNK = 1 << 20
TAG = 16
_HEADER = struct.Struct(">4s8sI")


class VaultError(Exception):
    """A vault file that does not decrypt: damaged, truncated, or made with another key."""


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _chunk_aad(header: bytes, index: int, last: bool) -> bytes:
    return header + struct.pack(">I?", index, last)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def encrypt(key: bytes, src: BinaryIO, dst: BinaryIO, chunk: int = CHUNK) -> tuple[str, int]:
    """Encrypt ``src`` (read to its end) into ``dst``; returns the plaintext's SHA-256 and size."""
    aead = AESGCM(key)
    prefix = os.urandom(8)
    header = _HEADER.pack(MAGIC, prefix, chunk)
    dst.write(header)
    digest = hashlib.sha256()
    size = 0
    index = 0
    piece = src.read(chunk)
    while True:
        following = src.read(chunk) if len(piece) == chunk else b""
        last = not following
        digest.update(piece)
        size += len(piece)
        dst.write(aead.encrypt(_nonce(prefix, index), piece, _chunk_aad(header, index, last)))
        if last:
            return digest.hexdigest(), size
        piece = following
        index += 1


def decrypt_chunks(key: bytes, src: BinaryIO, stored_size: int) -> Iterator[bytes]:
    """The plaintext of a vault file of ``stored_size`` bytes, chunk by chunk; raises VaultError."""
    header = src.read(_HEADER.size)
    if len(header) != _HEADER.size:
        raise VaultError("truncated header")
    magic, prefix, chunk = _HEADER.unpack(header)
    if magic != MAGIC or not 0 < chunk <= 64 * CHUNK:
        raise VaultError("not a Bastion vault file")
    body = stored_size - _HEADER.size
    count = max(1, -(-body // (chunk + TAG)))
    aead = AESGCM(key)
    for index in range(count):
        sealed = src.read(chunk + TAG)
        last = index == count - 1
        if len(sealed) < TAG or (not last and len(sealed) != chunk + TAG):
            raise VaultError("truncated")
        try:
            yield aead.decrypt(_nonce(prefix, index), sealed, _chunk_aad(header, index, last))
        except Exception as exc:  # cryptography's InvalidTag: wrong key, changed or cut bytes
            raise VaultError("does not decrypt (damaged, or another quarantine's key)") from exc


def decrypt(key: bytes, path: str, dst: BinaryIO | None = None) -> tuple[str, int]:
    """Decrypt the vault file at ``path`` into ``dst`` (or only check it); returns SHA-256 and size."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for piece in decrypt_chunks(key, fh, os.fstat(fh.fileno()).st_size):
            digest.update(piece)
            size += len(piece)
            if dst is not None:
                dst.write(piece)
    return digest.hexdigest(), size
