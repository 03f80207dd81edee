"""The backbones BoneNet ships, never ImageNet: where each file lives and a check of it against its provenance.

`synthetic_backbone_96` (the demo's: EfficientNetB0 pretrained on synthetic radiographs) and
`radiograph_backbone_96` (`--weights radiograph`: pretrained on open real radiographs) sit in `assets/` with a
provenance JSON each, written by `bonenet.training.pretrain`, which records how the file was made and its sha256.
"""

import json
from pathlib import Path

from bonenet.digests import file_sha256

ASSETS = Path(__file__).parent / "assets"
SHIPPED_BACKBONE = ASSETS / "synthetic_backbone_96.weights.h5"
ORIGIN = "synthetic radiographs, NOT ImageNet"
RADIOGRAPH_BACKBONE = ASSETS / "radiograph_backbone_96.weights.h5"
RADIOGRAPH_ORIGIN = "open real radiographs, NOT ImageNet"


def provenance_path(weights):
    """The provenance JSON beside a backbone file: `name.json` for `name.weights.h5`."""
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(".weights.h5") + ".json")


def shipped_backbone():
    """The shipped synthetic-pretrained backbone, checked against the sha256 in its provenance.

    Returns:
        (weights path, provenance dict).

    Raises:
        FileNotFoundError: the file or its provenance is missing.
        ValueError: the file's sha256 differs from its provenance's.
    """
    return checked_asset(SHIPPED_BACKBONE)


def radiograph_backbone():
    """The shipped radiograph-pretrained backbone, checked against the sha256 in its provenance (`--weights
    radiograph`). Returns (weights path, provenance dict); raises as `shipped_backbone` does."""
    return checked_asset(RADIOGRAPH_BACKBONE)


def checked_asset(path):
    """A shipped file and its provenance, checked: (path, provenance dict); raises as `shipped_backbone` does."""
    note = provenance_path(path)
    if not path.is_file() or not note.is_file():
        raise FileNotFoundError(f"{path}: this shipped file or its provenance JSON is missing; reinstall "
                                "BoneNet, or remake it with the command the provenance records")
    provenance = json.loads(note.read_text())
    digest = file_sha256(path)
    if digest != provenance.get("sha256"):
        raise ValueError(f"{path}: sha256 {digest[:12]}… differs from its provenance's "
                         f"{str(provenance.get('sha256'))[:12]}…; the file is damaged or was replaced")
    return path, provenance
