"""PCRE subsignatures of logical signatures: compiled with PCRE2, the library ClamAV itself uses.

Python's ``re`` differs from PCRE in places signature authors rely on (named groups ``(?<n>...)``,
``\\h``, possessive and recursion syntax), so PCRE subsignatures never go to ``re``: a regex PCRE2
refuses is a load error naming its line, never a silently dropped signature.
"""

from __future__ import annotations


def compile_pcre(regex: bytes, flags: str) -> object:
    """A PCRE2 pattern for a PCRE subsignature's regex and flags; ``ValueError`` if PCRE2 refuses it.

    ``i s m x`` map to PCRE2's options, ``U`` to ``(?U)``; ``A`` (anchored) is applied when matching.
    ``E`` (dollar-end-only) has no inline form in PCRE2 and is not applied (README).
    """
    import pcre2  # only databases with PCRE subsignatures need it

    options = 0
    for flag, option in (("i", pcre2.I), ("s", pcre2.S), ("m", pcre2.M), ("x", pcre2.X)):
        if flag in flags:
            options |= option
    if "U" in flags:
        regex = b"(?U)" + regex
    try:
        return pcre2.compile(regex, flags=options)
    except Exception as exc:  # pcre2 raises its own error type
        raise ValueError(f"PCRE2 refuses the regex: {exc}") from None
