"""Targets grouped by pointing, not by the header's OBJECT name."""

import pytest
from imred.targets import assign_targets, group_name


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["NCG2420_B", "NCG2420_V"], "NCG2420"),  # the real CAFOS names
        (["SA98_650", "SA98_670"], "SA98"),  # cut at a separator, not mid-word
        (["M31", "M31"], "M31"),
        (["a", "b", "b"], "b"),  # no useful common start: the most frequent name
        (["NGC1_B", "NGC1_B_2"], "NGC1_B"),
    ],
)
def test_group_name(names, expected):
    assert group_name(names) == expected


def _rows(specs):
    """One row per (frame, name, ra, dec), two chips each."""
    return [
        {"night": "20240101", "frame": f, "chip": c, "target": name, "ra": ra, "dec": dec}
        for f, name, ra, dec in specs
        for c in ("c1", "c2")
    ]


def test_frames_are_grouped_by_pointing():
    rows = _rows(
        [
            ("b1", "NCG2420_B", 114.60, 21.57),
            ("b2", "NCG2420_B", 114.61, 21.575),  # a dither
            ("v1", "NCG2420_V", 114.60, 21.57),
            ("far", "NCG2420_V", 120.00, 21.57),  # the same name, 5 deg away
            ("sa", "SA98", 30.0, -0.5),
            ("blind", "NCG2420_B", None, None),  # no pointing: its own name
        ]
    )
    assign_targets(rows, radius_deg=0.1)
    by_frame = {r["frame"]: r["target"] for r in rows}
    assert by_frame["b1"] == by_frame["b2"] == by_frame["v1"] == "NCG2420"
    assert by_frame["far"] == "NCG2420_V"  # a group of its own, named by its frames
    assert by_frame["sa"] == "SA98"
    assert by_frame["blind"] == "NCG2420_B"
    # the chips of a frame share its target; the log's name is kept as 'object'
    assert all(r["target"] == by_frame[r["frame"]] for r in rows)
    assert {r["object"] for r in rows if r["frame"] == "v1"} == {"NCG2420_V"}


def test_clashing_group_names_get_a_suffix_and_object_mode_keeps_names():
    rows = _rows([("a", "FIELD", 10.0, 0.0), ("b", "FIELD", 50.0, 0.0)])
    assign_targets(rows, radius_deg=0.1)
    assert sorted({r["target"] for r in rows}) == ["FIELD", "FIELD_2"]
    rows = _rows([("b", "X_B", 10.0, 0.0), ("v", "X_V", 10.0, 0.0)])
    assign_targets(rows, radius_deg=0.1, group_by="object")
    assert sorted({r["target"] for r in rows}) == ["X_B", "X_V"]
