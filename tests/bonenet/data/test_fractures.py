"""FracAtlas' fracture annotations (`bonenet.data.fractures`), on the attributed fixture."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bonenet.data.fractures import fracture_mask, read_annotations
from bonenet.data.mura import MuraError

FIXTURE = Path(__file__).parents[2] / "fixtures" / "fracatlas"


def test_every_fractured_fixture_film_has_its_outlines_and_boxes():
    notes = read_annotations(FIXTURE)
    table = pd.read_csv(FIXTURE / "dataset.csv")
    fractured = set(table.loc[table["fractured"] == 1, "image_id"])
    assert set(notes) == fractured
    for name, note in notes.items():
        assert len(note["boxes"]) == int(table.loc[table["image_id"] == name, "fracture_count"].iloc[0])
        assert note["polygons"] and all(len(p) % 2 == 0 for p in note["polygons"])


def test_the_mask_fills_the_outline_inside_its_box():
    note = {"polygons": [[10, 10, 30, 10, 30, 20, 10, 20]], "boxes": [[10, 10, 20, 10]]}
    mask = fracture_mask(note, (40, 50))
    assert mask.dtype == np.float32 and mask[15, 20] == 1 and mask[5, 5] == 0
    assert mask.sum() == pytest.approx(21 * 11, abs=25)  # fillPoly includes the outline's pixels
    # An annotation without an outline falls back to its box.
    assert fracture_mask({"polygons": [], "boxes": [[0, 0, 4, 3]]}, (10, 10)).sum() == 12


def test_a_missing_or_broken_annotation_file_is_one_line_naming_it(tmp_path):
    with pytest.raises(MuraError, match="fracture_annotations_coco.json: no such file"):
        read_annotations(tmp_path)
    (tmp_path / "fracture_annotations_coco.json").write_text('{"images": []}')
    with pytest.raises(MuraError, match="not COCO annotations"):
        read_annotations(tmp_path)
