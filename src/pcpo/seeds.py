"""Seed lists as users write them: a count ``N`` (seeds 0..N-1), a list, or ranges like ``"100-119"``
(``seeds:`` in bench files, ``--seeds`` of ``pcpo bench`` and ``pcpo check-toy``)."""

from __future__ import annotations

import re

__all__ = ["parse_seeds", "seeds_arg"]


def seeds_arg(text: str) -> int | list[int]:
    """``--seeds`` of ``pcpo bench`` and ``pcpo check-toy``: a bare integer is a count (as ``seeds: N`` in a
    bench file), anything else a list or ranges of seeds (:func:`parse_seeds`)."""
    import argparse

    text = text.strip()
    try:
        if text.isdigit():
            n = int(text)
            parse_seeds(n, "--seeds")
            return n
        return parse_seeds(text, "--seeds")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--seeds: ")) from None


def parse_seeds(value, where: str = "seeds") -> list[int]:
    """Seeds from an int ``N`` (0..N-1), a list (of ints or ``"A-B"``), ``"A-B"`` or ``"A-B,C"``."""
    def bad() -> ValueError:
        return ValueError(f"{where}: give an integer count, a list of seeds, or a range like \"100-119\"; "
                          f"got {value!r}")

    if isinstance(value, bool):
        raise bad()
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{where}: must be >= 1, got {value}")
        return list(range(value))
    items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else None
    if not items:
        raise bad()
    out: list[int] = []
    for it in items:
        if isinstance(it, int) and not isinstance(it, bool) and it >= 0:
            out.append(it)
            continue
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(it)) if isinstance(it, (str, int)) else None
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise bad()
        lo = int(m.group(1))
        out += list(range(lo, int(m.group(2)) + 1)) if m.group(2) is not None else [lo]
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: seed {next(s for s in out if out.count(s) > 1)} is listed twice")
    return out
