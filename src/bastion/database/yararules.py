"""Compiled YARA rules: every accepted rule file compiled once by yara-x into one serialized rule set.

Saved in the compiled-database directory as ``yara.rules`` (yara-x's own serialization) plus
``yara.index.json``: per namespace its source index, and per rule its line in that source (found in
the text, for evidence).  Rules are shared by all threads; yara-x scanners are not, so the engine
keeps one per thread.
"""

from __future__ import annotations

import io
import json
import os
import re

from bastion.signatures.model import YaraSource

_RULE = re.compile(r"^[ \t]*(?:(?:private|global)\s+)*rule\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE)


class YaraRules:
    """yara-x rules plus where each rule was written."""

    def __init__(self, blob: bytes, index: dict[str, object]) -> None:
        self.blob = blob
        self.index = index  # {"namespaces": {ns: source_index}, "lines": {"ns:rule": line}, "count": n}
        self._rules: object | None = None

    @property
    def count(self) -> int:
        return int(self.index.get("count", 0))  # type: ignore[call-overload]

    def rules(self) -> object:
        """The deserialized yara-x rules (loaded on first use)."""
        if self._rules is None:
            import yara_x

            self._rules = yara_x.Rules.deserialize_from(io.BytesIO(self.blob))
        return self._rules

    def source_of(self, namespace: str, rule: str) -> tuple[int, int]:
        namespaces: dict[str, int] = self.index["namespaces"]  # type: ignore[assignment]
        lines: dict[str, int] = self.index["lines"]  # type: ignore[assignment]
        return namespaces.get(namespace, 0), lines.get(f"{namespace}:{rule}", 0)

    @classmethod
    def build(cls, sources: list[YaraSource]) -> YaraRules | None:
        if not sources:
            return None
        from bastion.signatures.yara import new_compiler

        compiler = new_compiler()
        lines: dict[str, int] = {}
        count = 0
        for src in sources:
            compiler.new_namespace(src.namespace)  # type: ignore[attr-defined]
            compiler.add_source(src.text, origin=src.path)  # type: ignore[attr-defined]
            ignored = {r.name for r in compiler.ignored_rules()}  # type: ignore[attr-defined]
            for m in _RULE.finditer(src.text):
                lines[f"{src.namespace}:{m.group(1)}"] = src.text.count("\n", 0, m.start(1)) + 1
                if not m.group(0).lstrip().startswith("private") and m.group(1) not in ignored:
                    count += 1
        rules = compiler.build()  # type: ignore[attr-defined]
        buf = io.BytesIO()
        rules.serialize_into(buf)
        index = {"namespaces": {s.namespace: s.source_index for s in sources}, "lines": lines, "count": count}
        built = cls(buf.getvalue(), index)
        built._rules = rules
        return built

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, "yara.rules"), "wb") as fh:
            fh.write(self.blob)
        with open(os.path.join(directory, "yara.index.json"), "w", encoding="utf-8") as fh:
            json.dump(self.index, fh)

    @classmethod
    def load(cls, directory: str) -> YaraRules | None:
        path = os.path.join(directory, "yara.rules")
        if not os.path.exists(path):
            return None
        with open(path, "rb") as fh:
            blob = fh.read()
        with open(os.path.join(directory, "yara.index.json"), encoding="utf-8") as fh:
            index = json.load(fh)
        return cls(blob, index)
