"""The seven MURA body parts: the one place that defines them."""

PARTS = (
    "XR_ELBOW",
    "XR_FINGER",
    "XR_FOREARM",
    "XR_HAND",
    "XR_HUMERUS",
    "XR_SHOULDER",
    "XR_WRIST",
)
PART_INDEX = {part: i for i, part in enumerate(PARTS)}


def short_name(part):
    """Returns the lower-case short name of a canonical part: `XR_ELBOW` -> `elbow`."""
    return part[3:].lower()


def parse_part(name):
    """Returns the canonical part name for `elbow`, `XR_ELBOW` or any case of either.

    Raises:
        ValueError: naming the accepted values when `name` is not a part.
    """
    key = str(name).strip().upper()
    if not key.startswith("XR_"):
        key = "XR_" + key
    if key not in PART_INDEX:
        accepted = ", ".join(short_name(p) for p in PARTS)
        raise ValueError(f"Unknown body part {name!r}; expected one of {accepted} (or XR_ELBOW etc.)")
    return key
