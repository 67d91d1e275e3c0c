"""ClamAV's configuration file syntax (clamd.conf, freshclam.conf): one ``Name value`` per line,
``#`` comments, values optionally in double quotes.  Readers of those files share this one parser."""

from __future__ import annotations


def conf_lines(path: str) -> list[tuple[int, str, str]]:
    """(line number, option name, value) for every setting in the file, in order."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, _, value = line.partition(" ")
            out.append((number, name, value.strip().strip('"')))
    return out


def values_of(path: str, option: str) -> list[str]:
    """Every non-empty value given to ``option``, in order (options such as DatabaseMirror repeat)."""
    return [value for _, name, value in conf_lines(path) if name == option and value]
