"""Which raw files an exposure makes, their names, and the arrays in them.

A camera writes either one multi-extension file per exposure holding every chip (no
chip of the instrument file has ``select``), or one file per chip or per group of
chips (every chip has ``select``: a file-name glob and/or a header keyword and value).
Chips with the same ``select`` go to the same file; chips with the same ``select`` and
``extension`` share one raw array (a split detector behind two filters): each fills
its own data section (and amplifier sections), the rest of the array comes from the
first of them.

File names: a multi-extension file is ``{frame}.fits``. A file selected by name is
named by filling the chip's ``select.filename`` glob: the first wildcard carries the
exposure number (a run of ``?`` zero-padded to its length; a ``*`` the frame name),
later runs of ``?`` the digits of the UTC start time (``HHMMSSfff``, cut or padded
with zeros), later ``*`` nothing, and a ``[...]`` class its first allowed character.
A file selected by keyword only is ``{frame}_{value}.fits``.
"""

from __future__ import annotations

import fnmatch
import string
from dataclasses import dataclass

import numpy as np

from ..errors import ImredError
from ..instrument import safe_name

_CLASS_CANDIDATES = string.digits + string.ascii_letters + "_-."


@dataclass
class RawFile:
    """One file of an exposure: the chips it carries (layouts, instrument order)."""

    select: dict
    layouts: list

    @property
    def chip_names(self) -> list[str]:
        return [lay.name for lay in self.layouts]


def raw_files(layouts: list) -> list[RawFile]:
    """Group the chips by the file that carries them (in the order of their first chip)."""
    groups: dict[str, RawFile] = {}
    for lay in layouts:
        key = repr(sorted(lay.select.items()))
        groups.setdefault(key, RawFile(select=dict(lay.select), layouts=[])).layouts.append(lay)
    return list(groups.values())


def _fill_class(body: str) -> str:
    for c in _CLASS_CANDIDATES:
        if fnmatch.fnmatchcase(c, f"[{body}]"):
            return c
    raise ImredError(f"no file-name character fits the glob class [{body}]")


def fill_glob(pattern: str, number: int, frame: str, time_digits: str) -> str:
    """A file name matching ``pattern`` for exposure ``number`` (see the module docstring)."""
    out: list[str] = []
    first = True
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "?":
            j = i
            while j < len(pattern) and pattern[j] == "?":
                j += 1
            n = j - i
            if first:
                text = f"{number:0{n}d}"
                if len(text) > n:
                    raise ImredError(
                        f"select.filename {pattern!r}: exposure {number} does not fit in the "
                        f"{n} characters of its first '?' run; the night has too many exposures"
                    )
                first = False
            else:
                text = (time_digits + "0" * n)[:n]
            out.append(text)
            i = j
        elif c == "*":
            out.append(frame if first else "")
            first = False
            i += 1
        elif c == "[":
            start = i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1
            if pattern[i + 1 : i + 3] == "!]":
                start = i + 3
            j = pattern.find("]", start)
            if j < 0:
                out.append(c)
                i += 1
                continue
            out.append(_fill_class(pattern[i + 1 : j]))
            i = j + 1
        else:
            out.append(c)
            i += 1
    if first:
        raise ImredError(
            f"select.filename {pattern!r} has no wildcard ('?' or '*'), so every exposure would "
            "get the same file name; the simulator cannot write such a camera"
        )
    name = "".join(out)
    if not fnmatch.fnmatchcase(name, pattern):  # pragma: no cover - a bug in the filler
        raise ImredError(f"simulator: file name {name!r} does not match its glob {pattern!r}")
    return name


def file_name(raw: RawFile, frame_name: str, number: int, dateobs: str) -> str:
    """The name of one raw file of an exposure (see the module docstring)."""
    if not raw.select:
        return f"{frame_name}.fits"
    if "filename" in raw.select:
        time_digits = "".join(ch for ch in dateobs.split("T")[-1] if ch.isdigit())
        return fill_glob(raw.select["filename"], number, frame_name, time_digits)
    return f"{frame_name}_{safe_name(str(raw.select.get('value', '')))}.fits"


def by_extension(layouts: list, arrays: list) -> list[tuple[int | str, list, np.ndarray]]:
    """``(extension, layouts, raw array)`` per HDU of a file, split arrays composed."""
    groups: dict[str, tuple[int | str, list, list]] = {}
    for lay, data in zip(layouts, arrays, strict=True):
        groups.setdefault(str(lay.extension), (lay.extension, [], []))
        groups[str(lay.extension)][1].append(lay)
        groups[str(lay.extension)][2].append(data)
    out = []
    for extension, members, datas in groups.values():
        composed = datas[0]
        if len(members) > 1:
            composed = datas[0].copy()
            for lay, data in zip(members[1:], datas[1:], strict=True):
                regions = [lay.datasec] + [a.data for a in lay.amps]
                regions += [a.overscan for a in lay.amps if a.overscan]
                for rows, cols in regions:
                    composed[rows, cols] = data[rows, cols]
        out.append((extension, members, composed))
    return out
