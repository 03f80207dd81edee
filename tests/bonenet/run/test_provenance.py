"""Whether a run has learned from real radiographs, decided once (`bonenet.run.provenance`)."""

import pytest

from bonenet.run import provenance

IMAGENET = {"kind": "imagenet", "description": "ImageNet (Keras)"}
SYNTHETIC = {"kind": "file", "description": "synthetic radiographs, NOT ImageNet"}


def _manifest(weights, synthetic, models=("router", "XR_WRIST")):
    from bonenet.run.manifest import ModelRecord, RunManifest

    def model(key):
        return ModelRecord(file=key, labels=["x"], members=[{"file": key}], recipe={"name": "equalize"},
                           calibration={"temperature": None}, dataset={"synthetic": synthetic} if key == "router" else {})

    return RunManifest(image_size=64, recipe={"name": "equalize"}, weights=weights, trainable_layers={"count": 20},
                       models={key: model(key) for key in models})


@pytest.mark.parametrize("weights, synthetic, reasons, caveat", [
    (IMAGENET, False, [], None),
    (IMAGENET, True, ["data"], "CAVEAT: synthetic training data; unproven on real radiographs"),
    (SYNTHETIC, False, ["backbone"], "CAVEAT: no ImageNet backbone; unproven on real radiographs"),
    ({"kind": "none"}, True, ["backbone", "data"],
     "CAVEAT: no ImageNet backbone, synthetic training data; unproven on real radiographs"),
])
def test_one_decision_worded_for_each_output(weights, synthetic, reasons, caveat):
    assert provenance.unproven(weights, synthetic) == reasons
    assert provenance.caveat(_manifest(weights, synthetic)) == caveat
    warning = provenance.backbone_warning(weights)
    assert (warning is None) == ("backbone" not in reasons)
    if warning:
        assert provenance.backbone_origin(weights) in warning


def test_the_card_the_banner_and_the_caveat_agree():
    from bonenet.evaluation.report import banner
    from bonenet.run.model_card import _limits

    for weights, synthetic in [(IMAGENET, False), (SYNTHETIC, True), (IMAGENET, True), (SYNTHETIC, False)]:
        reasons = provenance.unproven(weights, synthetic)
        facts = {"data": {"synthetic": synthetic}, "backbone": {"origin": provenance.backbone_origin(weights)}}
        limits = " ".join(_limits(_manifest(weights, synthetic, models=()), facts))
        shown = banner({"source": {"weights": weights, "synthetic": synthetic, "data_root": "D"}})
        assert ("not ImageNet-pretrained" in limits) == ("not ImageNet-pretrained" in shown) == ("backbone" in reasons)
        assert ("synthetic" in shown) == ("data" in reasons or "synthetic" in weights["description"])
        assert bool(shown) == bool(reasons)
