"""Cron times, the five fields of crontab(5): minute hour day-of-month month day-of-week, each ``*``,
a number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a comma list of those; names of months
and days (``jan``, ``mon``) and the shorthands ``@hourly @daily @weekly @monthly @yearly``.  As in
cron, when both day fields are restricted a day matching either one is due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_SHORTHANDS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
               "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                        "dec"), 1)}
_DAYS = {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, _MONTHS),
           ("day of week", 0, 7, _DAYS))


class CronError(ValueError):
    pass


def _value(text: str, names: dict[str, int], what: str) -> int:
    low = text.lower()
    if low in names:
        return names[low]
    if not text.isdigit():
        raise CronError(f"{what}: {text!r} is not a number")
    return int(text)


def _field(text: str, what: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = _value(step_text, {}, what) if step_text else 1
        if step < 1:
            raise CronError(f"{what}: step must be at least 1")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = _value(a, names, what), _value(b, names, what)
        else:
            start = _value(base, names, what)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise CronError(f"{what}: {part!r} is outside {low}-{high}")
        out.update(range(start, end + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class Cron:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool
    weekdays_restricted: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        spec = _SHORTHANDS.get(text.strip().lower(), text.strip())
        parts = spec.split()
        if len(parts) != 5:
            raise CronError(f"{text!r}: a cron time has 5 fields (minute hour day month weekday)")
        sets = [_field(p, what, lo, hi, names) for p, (what, lo, hi, names) in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in sets[4])  # 7 is Sunday too
        return cls(text.strip(), sets[0], sets[1], sets[2], sets[3], weekdays, parts[2] != "*", parts[4] != "*")

    def matches(self, when: datetime) -> bool:
        if when.minute not in self.minutes or when.hour not in self.hours or when.month not in self.months:
            return False
        day_ok = when.day in self.days
        weekday_ok = (when.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    def next_after(self, when: datetime) -> datetime:
        """The first matching minute strictly after ``when`` (searched up to five years ahead)."""
        t = when.replace(second=0, microsecond=0) + timedelta(minutes=1)
        for _ in range(5 * 366 * 24 * 60):
            if self.matches(t):
                return t
            t += timedelta(minutes=1)
        raise CronError(f"{self.text!r} never matches")
