"""Targets: which science frames belong together (one reference catalog, one coadd).

Header OBJECT names are not reliable identifiers of a field: observers name the same
pointing per band (``NGC2420_B``, ``NGC2420_V``) or per exposure. With ``group_by:
pointing`` (the default, config ``targets``) frames are grouped friends-of-friends:
two frames whose pointings are closer than the linking length are in one group. A
group is named by the longest common start of its frames' names, cut at a separator
and kept if it has at least 3 characters (``NGC2420``); otherwise by its most
frequent name. Groups that would share a name get ``_2``, ``_3``... in order of
right ascension. Frames without a pointing keep their own name. With ``group_by:
object`` the target is the OBJECT name (path-safe), as in the observation log.

The observation log keeps the header's name (column ``target``); in the run the
row's ``target`` becomes the group's name and ``object`` keeps the log's.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

_SEPARATORS = "_-. +"


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """(n, 3) unit vectors of sky positions in degrees."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def mean_direction(ra_deg, dec_deg) -> tuple[float, float]:
    """The mean direction (ra, dec in degrees) of sky positions (safe across RA = 0)."""
    m = unit_vectors(ra_deg, dec_deg).mean(axis=0)
    m /= np.linalg.norm(m)
    return float(np.degrees(np.arctan2(m[1], m[0])) % 360), float(np.degrees(np.arcsin(m[2])))


def group_name(names: list[str]) -> str:
    """The name of a group of frames (see the module docstring)."""
    distinct = sorted(set(names))
    if len(distinct) == 1:
        return distinct[0]
    prefix = os.path.commonprefix(distinct)  # noqa: RUF071 (characters, not paths)
    ends_cleanly = all(n == prefix or n[len(prefix)] in _SEPARATORS for n in distinct)
    if not ends_cleanly and any(c in prefix for c in _SEPARATORS):
        prefix = prefix[: max(prefix.rfind(c) for c in _SEPARATORS)]  # cut at a separator
    prefix = prefix.rstrip(_SEPARATORS)
    if len(prefix) >= 3:
        return prefix
    counts = Counter(names)
    return min(distinct, key=lambda n: (-counts[n], n))


def assign_targets(rows: list[dict], radius_deg: float, group_by: str = "pointing") -> None:
    """Set ``row["target"]`` to its group's name (in place); ``row["object"]`` keeps the log's.

    ``rows``: science rows (one per frame x chip; the rows of a frame share its
    pointing). ``radius_deg``: the linking length.
    """
    for r in rows:
        r.setdefault("object", r.get("target"))
    if group_by == "object":
        for r in rows:
            r["target"] = r["object"]
        return
    frames: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("ra") is not None and r.get("dec") is not None:
            frames.setdefault((r["night"], r["frame"]), []).append(r)
        else:
            r["target"] = r["object"]
    if not frames:
        return
    keys = list(frames)
    first = [frames[k][0] for k in keys]
    ra = np.array([float(r["ra"]) for r in first])
    dec = np.array([float(r["dec"]) for r in first])
    tree = cKDTree(unit_vectors(ra, dec))
    chord = 2 * np.sin(np.radians(radius_deg) / 2)
    pairs = tree.query_pairs(chord, output_type="ndarray")
    n = len(keys)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    n_groups, label = connected_components(graph, directed=False)
    groups = []
    for g in range(n_groups):
        members = np.flatnonzero(label == g)
        names = [str(first[i].get("object") or "target") for i in members]
        groups.append((group_name(names), float(np.mean(ra[members])), members))
    groups.sort(key=lambda t: (t[0], t[1]))
    seen: Counter = Counter()
    for name, _, members in groups:
        seen[name] += 1
        final = name if seen[name] == 1 else f"{name}_{seen[name]}"
        for i in members:
            for r in frames[keys[i]]:
                r["target"] = final
