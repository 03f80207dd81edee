"""The published baselines (`bonenet.evaluation.baselines`), checked against the papers' tables in the tests' own data."""

import re
from pathlib import Path

import pytest

from bonenet.evaluation import baselines
from bonenet.parts import PARTS, short_name

PUBLISHED = Path(__file__).resolve().parents[2] / "fixtures" / "published_baselines.md"


def _rows():
    return PUBLISHED.read_text().splitlines()


def test_stanford_kappa_covers_every_part_and_overall_as_published():
    assert set(baselines.STANFORD_KAPPA) == {*PARTS, "overall"}
    assert "arXiv:1712.06957" in baselines.STANFORD_SOURCE
    header = "| " + " | ".join([*(short_name(p) for p in PARTS), "overall"]) + " |"
    lines = _rows()
    published = [float(v) for v in re.findall(r"\d\.\d+", lines[lines.index(header) + 2])]
    assert published == [baselines.STANFORD_KAPPA[p] for p in [*PARTS, "overall"]]


def test_patels_per_part_figures_are_as_published_with_a_consistent_f1():
    assert set(baselines.PATEL) == set(PARTS)
    rows = {line.split("|")[1].strip(): [float(v) for v in re.findall(r"\.\d+", line)] for line in _rows()
            if line.startswith("| ") and line.split("|")[1].strip() in {short_name(p) for p in PARTS}
            and "." in line}
    for part, m in baselines.PATEL.items():
        assert set(m) == {"accuracy", "precision", "sensitivity", "f1"}, part
        assert [m[k] for k in ("accuracy", "precision", "sensitivity", "f1")] == rows[short_name(part)], part
        harmonic = 2 * m["precision"] * m["sensitivity"] / (m["precision"] + m["sensitivity"])
        assert m["f1"] == pytest.approx(harmonic, abs=0.002), part
