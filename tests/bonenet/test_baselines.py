"""The published baselines (`bonenet.baselines`), checked against the design document's tables."""

import re
from pathlib import Path

import pytest

from bonenet import baselines
from bonenet.parts import PARTS, short_name

DESIGN = Path(__file__).resolve().parents[3] / "shared" / "design.md"


def test_stanford_kappa_covers_every_part_and_overall_as_published():
    assert set(baselines.STANFORD_KAPPA) == {*PARTS, "overall"}
    assert all(0 < k < 1 for k in baselines.STANFORD_KAPPA.values())
    assert "arXiv:1712.06957" in baselines.STANFORD_SOURCE
    if DESIGN.is_file():  # the design document sits beside a checkout in this team's layout
        header = "| " + " | ".join([*(short_name(p) for p in PARTS), "overall"]) + " |"
        lines = DESIGN.read_text().splitlines()
        values = lines[lines.index(header) + 2]
        published = [float(v) for v in re.findall(r"\d\.\d+", values)]
        assert published == [baselines.STANFORD_KAPPA[p] for p in [*PARTS, "overall"]]


def test_patels_per_part_figures_are_fractions_with_a_consistent_f1():
    assert set(baselines.PATEL) == set(PARTS)
    for part, m in baselines.PATEL.items():
        assert set(m) == {"accuracy", "precision", "sensitivity", "f1"}, part
        harmonic = 2 * m["precision"] * m["sensitivity"] / (m["precision"] + m["sensitivity"])
        assert m["f1"] == pytest.approx(harmonic, abs=0.002), part
