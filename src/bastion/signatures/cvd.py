"""ClamAV database containers: ``.cvd`` (signed), ``.cld`` (built by freshclam), ``.cud`` (unsigned).

Layout (ClamAV's CVD format): a 512-byte ASCII header ``ClamAV-VDB:time:version:signatures:
functionality level:md5:dsig:builder:unix time`` padded with spaces, then a gzip'd tar (a ``.cld`` may
be a plain tar) whose members are ``COPYING``, ``<name>.info`` and the database files.

Checks, in order, before anything is loaded (a container that fails one is refused whole, with the
reason, and the rest of the database directory still loads):

* ``.cvd``: the header's MD5 is the MD5 of everything after the header, and its digital signature
  verifies with ClamAV's published key: the signature text is a number in base 64 (alphabet
  ``a-z A-Z 0-9 + /``, first character least significant); raised to the public exponent modulo the
  public modulus it gives the 16 MD5 bytes, big-endian, left-padded with zeros.
* ``.cvd`` and ``.cld``: ``<name>.info``'s last line ``DSIG:`` signs the lines before it (RSASSA-PSS
  with SHA-256, MGF1, 32-byte salt, a 2048-bit key of ClamAV's: the ``.info`` key).  ``.cud`` is unsigned.
* Every database member's size and SHA-256 match its ``.info`` line, and no member is unlisted.

The public keys are ClamAV's (``CLI_NSTR``/``CLI_ESTR`` in libclamav/dsig.c, ``INFO_NSTR``/``INFO_ESTR``
in libclamav/readdb.c, ``PSS_NSTR``/``PSS_ESTR`` in libclamav_rust/src/cdiff.rs for ``.cdiff`` files); tests
pass their own.  Members are read in memory with bounded sizes and never written anywhere.

Detached signatures (ClamAV 1.5): ``<name>-<version>.cvd.sign`` beside a ``.cvd`` holds lines
``minFL:maxFL:pkcs7-pem:<base64 DER>``; each is a detached PKCS#7 signature over the whole ``.cvd``,
checked with ``openssl cms -verify`` against the CA certificates in ``$BASTION_CVD_CERTS_DIR`` (default:
``certs/clamav.crt`` shipped beside this module: ClamAV's root, the Cisco Software Identity Root CA, as
ClamAV ships it).  As in ClamAV: a line for this functionality level that fails makes the container
refused; without a usable ``.sign`` the legacy signature decides.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zlib
from dataclasses import dataclass, field

HEADER_SIZE = 512
MAX_UNPACKED = 4 * 1024**3
MAX_MEMBERS = 100_000

_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"
_INDEX = {c: i for i, c in enumerate(_ALPHABET)}


@dataclass(frozen=True, slots=True)
class PublicKey:
    modulus: int
    exponent: int


CVD_KEY = PublicKey(int(
    "118640995551645342603070001658453189751527774412027743746599405743243142607464144767361060640655844749760788"
    "890022283424922762488917565551002467771109669598189410434699034532232228621591089508178591428456220796841621"
    "637175567590476666928698770143328137383952820383197532047771780196576957695822641224262693037"), 100001027)
INFO_KEY = PublicKey(int(
    "110888949830485454736595561066271949239289417917950476205916586974135810433227159121724968065253810558809645"
    "206184002243333205346602992339837553417406795028668299096799557343913926683783612215242053966310901051516412"
    "708572770803107343209516537005089417174191687239425078907029047027075874516216910507543078503833998653464872"
    "037984641785373922114027864813598244611972311028954150937703942166663244845939357624084685168266331921408266"
    "679234948220458053478099328484548458869717064243605586678627758760720594377033653802091016977385775154769350"
    "85469455279994113145977994084618328482151013142393373316337519977244732747977"), 100002049)
CDIFF_KEY = PublicKey(int(
    "147839058740774670902622285165579175702545996383762035320319892141055528472696874897719757921234421858172876"
    "949519498009087915275420171156005013033947786185358648452357000415900563182301024496122174585490160893133065"
    "913885907907965158196541023207257123008223563487240112326548375032417361779077841987008344406811247270605400"
    "357546996581058950500965762267530085968816988281856524249019216687583265784620032479064709820922981067896572"
    "119054889862810783463614695244848295595608862271980919954984406766396398304635932113860550653602884223940539"
    "98134458623712540683294034953818412458362198117811990006021989844180721010947"), 100002053)


@dataclass(frozen=True, slots=True)
class CvdHeader:
    name: str
    build_time: str
    version: int
    signatures: int
    functionality_level: int
    md5: str
    dsig: str
    builder: str
    unix_time: int


@dataclass(slots=True)
class Container:
    path: str
    kind: str                      # "cvd", "cld" or "cud"
    header: CvdHeader
    members: list[tuple[str, bytes]] = field(default_factory=list)
    verification: str = ""        # how it was verified, for --info and the load report


class ContainerError(ValueError):
    """The container is refused; the message says why."""


def decode_signature(text: str) -> int:
    value = 0
    for i, ch in enumerate(text):
        if ch not in _INDEX:
            raise ContainerError(f"digital signature has a character outside its alphabet: {ch!r}")
        value += _INDEX[ch] << (6 * i)
    return value


def verify_md5_signature(md5_hex: str, dsig: str, key: PublicKey) -> bool:
    value = decode_signature(dsig)
    if value >= key.modulus:
        return False
    message = pow(value, key.exponent, key.modulus)
    return message < (1 << 128) and message.to_bytes(16, "big").hex() == md5_hex.lower()


def _mgf1(seed: bytes, length: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return bytes(out[:length])


def verify_pss_signature(message: bytes, dsig: str, key: PublicKey) -> bool:
    """RSASSA-PSS (SHA-256, MGF1-SHA-256, 32-byte salt) as ClamAV signs ``.info`` files and cdiffs."""
    value = decode_signature(dsig)
    size = (key.modulus.bit_length() + 7) // 8
    if value >= key.modulus:
        return False
    em = pow(value, key.exponent, key.modulus).to_bytes(size, "big")
    if em[-1] != 0xBC:
        return False
    hash_len = 32
    masked, h = em[: size - hash_len - 1], em[size - hash_len - 1: -1]
    db = bytearray(a ^ b for a, b in zip(masked, _mgf1(h, len(masked)), strict=True))
    db[0] &= 0x7F
    try:
        one = db.index(1)
    except ValueError:
        return False
    if any(db[:one]):
        return False
    salt = bytes(db[one + 1:])
    if len(salt) != 32:
        return False
    return hashlib.sha256(b"\0" * 8 + hashlib.sha256(message).digest() + salt).digest() == h


def read_header(data: bytes, name: str) -> CvdHeader:
    if len(data) < HEADER_SIZE:
        raise ContainerError("shorter than its 512-byte header (truncated)")
    text = data[:HEADER_SIZE].decode("latin-1").rstrip(" \0\n")
    fields = text.split(":")
    if fields[0] != "ClamAV-VDB" or len(fields) < 9:
        raise ContainerError("not a ClamAV database container (bad header)")
    try:
        return CvdHeader(name, fields[1], int(fields[2]), int(fields[3]), int(fields[4]), fields[5], fields[6],
                         fields[7], int(fields[8].strip() or 0))
    except ValueError:
        raise ContainerError("header has a non-numeric version, count, level or time") from None


def _untar(body: bytes) -> list[tuple[str, bytes]]:
    if body[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(body)) as gz:
                body = gz.read(MAX_UNPACKED + 1)
        except (OSError, EOFError, zlib.error) as exc:
            raise ContainerError(f"compressed body is damaged: {exc}") from None
        if len(body) > MAX_UNPACKED:
            raise ContainerError("unpacks to more than 4 GiB")
    members = []
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
            for info in tar:
                if len(members) >= MAX_MEMBERS:
                    raise ContainerError("too many members")
                if not info.isfile():
                    continue
                name = info.name
                if "/" in name or name in ("", ".", ".."):
                    raise ContainerError(f"member with a path: {name!r}")
                fh = tar.extractfile(info)
                data = fh.read() if fh is not None else b""
                if len(data) != info.size:
                    raise ContainerError(f"member {name} is truncated")
                members.append((name, data))
    except (tarfile.TarError, EOFError) as exc:
        raise ContainerError(f"archive is damaged: {exc}") from None
    return members


def _check_info(container: Container, info_key: PublicKey, signed: bool) -> None:
    stem = container.header.name
    members = dict(container.members)
    info = members.get(f"{stem}.info")
    if info is None:
        if signed:
            raise ContainerError(f"{stem}.info is missing")
        return
    lines = info.decode("latin-1").split("\n")
    listed: dict[str, tuple[int, str]] = {}
    signed_text = b""
    dsig = None
    for i, line in enumerate(lines):
        if line.startswith("DSIG:"):
            dsig = line[5:].strip()
            signed_text = "\n".join(lines[:i]).encode("latin-1") + b"\n"
            break
        if not line or line.startswith("ClamAV-VDB:"):
            continue
        parts = line.split(":")
        if len(parts) != 3 or not parts[1].isdigit():
            raise ContainerError(f"{stem}.info line {i + 1} is not name:size:sha256")
        listed[parts[0]] = (int(parts[1]), parts[2].lower())
    if signed:
        if dsig is None:
            raise ContainerError(f"{stem}.info is not signed")
        if not verify_pss_signature(signed_text, dsig, info_key):
            raise ContainerError(f"{stem}.info's digital signature does not verify")
    for name, data in container.members:
        if name in ("COPYING", f"{stem}.info"):
            continue
        if name not in listed:
            raise ContainerError(f"member {name} is not listed in {stem}.info")
        size, digest = listed[name]
        if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
            raise ContainerError(f"member {name} does not match its size and SHA-256 in {stem}.info")


def open_container(path: str, data: bytes | None = None, *, cvd_key: PublicKey | None = None,
                   info_key: PublicKey | None = None) -> Container:
    """Read, verify and unpack a container; :class:`ContainerError` says why one is refused.

    The keys default to ClamAV's (:data:`CVD_KEY`, :data:`INFO_KEY`, looked up at call time)."""
    cvd_key = cvd_key or CVD_KEY
    info_key = info_key or INFO_KEY
    if data is None:
        with open(path, "rb") as fh:
            data = fh.read()
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    kind = ext.lower().lstrip(".")
    if kind not in ("cvd", "cld", "cud"):
        raise ContainerError(f"not a database container: {base}")
    header = read_header(data, stem.split("-")[0])
    body = data[HEADER_SIZE:]
    checks = []
    if kind == "cvd":
        if hashlib.md5(body, usedforsecurity=False).hexdigest() != header.md5.lower():
            raise ContainerError("MD5 of the contents does not match the header (damaged or modified)")
        if not verify_md5_signature(header.md5, header.dsig, cvd_key):
            raise ContainerError("digital signature does not verify with ClamAV's key")
        checks.append("MD5 and digital signature verified")
    elif kind == "cud" and header.md5 not in ("", "X"):
        if hashlib.md5(body, usedforsecurity=False).hexdigest() != header.md5.lower():
            raise ContainerError("MD5 of the contents does not match the header (damaged or modified)")
        checks.append("MD5 verified (unsigned container)")
    container = Container(path, kind, header, _untar(body))
    _check_info(container, info_key, signed=kind in ("cvd", "cld"))
    if kind in ("cvd", "cld"):
        checks.append(f"{header.name}.info signature and member digests verified")
    else:
        checks.append("member digests verified")
    if kind == "cvd":
        sign = os.path.join(os.path.dirname(os.path.abspath(path)), f"{header.name}-{header.version}.cvd.sign")
        if os.path.exists(sign):
            checks.append(verify_sign_file(sign, data))
    container.verification = "; ".join(checks)
    return container


CERTS_DIR_ENV = "BASTION_CVD_CERTS_DIR"


def certs_dir() -> str:
    return os.environ.get(CERTS_DIR_ENV) or os.path.join(os.path.dirname(os.path.abspath(__file__)), "certs")


def verify_sign_file(sign_path: str, data: bytes) -> str:
    """Check a ``.sign`` file against ``data``; returns what was checked, raises ContainerError if a line
    that applies to this engine does not verify."""
    import base64
    import shutil
    import subprocess
    import tempfile

    from bastion import FUNCTIONALITY_LEVEL

    name = os.path.basename(sign_path)
    try:
        with open(sign_path, encoding="latin-1") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return f"{name} unreadable: legacy signature used"
    if not lines or lines[0].strip() != "#clamsign-1.0":
        return f"{name} not in #clamsign-1.0 format: legacy signature used"
    openssl = shutil.which("openssl")
    certs = [os.path.join(certs_dir(), f) for f in sorted(os.listdir(certs_dir()))
             if f.endswith((".crt", ".pem"))] if os.path.isdir(certs_dir()) else []
    for line in lines[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(":", 3)
        if len(parts) != 4 or parts[2] != "pkcs7-pem" or not parts[0].isdigit():
            continue
        low, high = int(parts[0]), int(parts[1]) if parts[1].isdigit() else None
        if low > FUNCTIONALITY_LEVEL or (high is not None and high < FUNCTIONALITY_LEVEL):
            continue
        if openssl is None or not certs:
            return f"{name} present but not checked (no openssl or no CA certificates): legacy signature used"
        try:
            der = base64.b64decode(parts[3], validate=True)
        except ValueError:
            raise ContainerError(f"{name}: signature is not valid base64") from None
        with tempfile.TemporaryDirectory(prefix="bastion-sign-") as tmp:
            files = {"sig.der": der, "content": data,
                     "ca.pem": b"".join(open(c, "rb").read() for c in certs)}  # noqa: SIM115
            for fname, blob in files.items():
                with open(os.path.join(tmp, fname), "wb") as fh:
                    fh.write(blob)
            r = subprocess.run([openssl, "cms", "-verify", "-inform", "DER", "-in", "sig.der", "-content", "content",
                                "-binary", "-CAfile", "ca.pem", "-purpose", "any", "-out", os.devnull],
                               cwd=tmp, capture_output=True, timeout=60)
        if r.returncode != 0:
            raise ContainerError(f"{name}: PKCS#7 signature does not verify with the trusted CA certificates")
        return f"{name}: PKCS#7 signature verified"
    return f"{name} has no signature for functionality level {FUNCTIONALITY_LEVEL}: legacy signature used"
