import pytest

from bonenet.parts import PARTS, parse_part, short_name


@pytest.mark.parametrize(
    "name,expected",
    [("elbow", "XR_ELBOW"), ("XR_ELBOW", "XR_ELBOW"), ("Wrist", "XR_WRIST"), ("xr_hand", "XR_HAND"), (" finger ", "XR_FINGER")],
)
def test_parse_part_accepts_short_and_canonical_names(name, expected):
    assert parse_part(name) == expected


@pytest.mark.parametrize("name", ["knee", "XR_KNEE", "", "XR_"])
def test_parse_part_rejects_unknown_names_listing_the_choices(name):
    with pytest.raises(ValueError, match="elbow, finger, forearm, hand, humerus, shoulder, wrist"):
        parse_part(name)


def test_seven_parts_in_mura_order():
    assert len(PARTS) == 7 and list(PARTS) == sorted(PARTS)
    assert [short_name(p) for p in PARTS][0] == "elbow"
