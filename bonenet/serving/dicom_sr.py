"""Results back into the PACS: one DICOM Comprehensive SR per study read from DICOM files (`predict --dicom-out`).

Written with highdicom (the `dicom` extra: `pip install "bonenet[dicom]"`). Each SR belongs to its source
study: highdicom copies the patient and study modules from the first source image and lists every source
instance (Study, Series and SOP Instance UIDs) in its evidence. Its content holds the study's finding
(abnormal or normal), p(abnormal) with its threshold and where that came from, whether p(abnormal) is
calibrated, the routed body part, the model's name and version, and "not for diagnostic use". An input
that is not DICOM never produces DICOM output.
"""

import datetime
from pathlib import Path

from bonenet import __version__
from bonenet.files import file_written_whole
from bonenet.parts import short_name
from bonenet.run.model_card import NOT_FOR_CLINICAL_USE

NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE. " + NOT_FOR_CLINICAL_USE
SERIES_NUMBER = 9901  # high, as modalities leave them, so the result sorts after the images
# SNOMED CT anatomic region codes (DICOM PS3.16, CID 4031 Common Anatomic Regions) of MURA's parts.
PART_CODES = {"XR_ELBOW": ("127949000", "Elbow"), "XR_FINGER": ("7569003", "Finger"),
              "XR_FOREARM": ("14975008", "Forearm"), "XR_HAND": ("85562004", "Hand"),
              "XR_HUMERUS": ("85050009", "Humerus"), "XR_SHOULDER": ("16982005", "Shoulder"),
              "XR_WRIST": ("8205005", "Wrist")}
# What DICOM has no code for is coded in BoneNet's own scheme (PS3.3 8.2: a private coding scheme).
PRIVATE = "99BONENET"
# Type 1 in the sources: the SR must reference them, so a source lacking one gets no SR.
REFERENCED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Type 2 in the patient and study modules the SR copies: anonymised DICOM often drops them, and the
# standard lets them be empty, so a missing one is written empty (PS3.5 7.4.3).
TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "AccessionNumber", "StudyID")


def _codes():
    from highdicom.sr import CodedConcept

    return {
        "report": CodedConcept("18748-4", "LN", "Diagnostic imaging report"),
        "finding": CodedConcept("121071", "DCM", "Finding"),
        "abnormal": CodedConcept("263654008", "SCT", "Abnormal"),
        "normal": CodedConcept("17621005", "SCT", "Normal"),
        "site": CodedConcept("363698007", "SCT", "Finding site"),
        "algorithm": CodedConcept("111001", "DCM", "Algorithm Name"),
        "version": CodedConcept("111003", "DCM", "Algorithm Version"),
        "comment": CodedConcept("121106", "DCM", "Comment"),
        "p": CodedConcept("p-abnormal", PRIVATE, "Probability of abnormality"),
        "threshold": CodedConcept("threshold", PRIVATE, "Decision threshold"),
        "threshold_source": CodedConcept("threshold-source", PRIVATE, "Decision threshold source"),
        "calibration": CodedConcept("calibration", PRIVATE, "Probability calibration"),
        "unit": CodedConcept("1", "UCUM", "no units"),
    }


def study_sr(result, sources, model_name):
    """A highdicom `ComprehensiveSR` of one study's result.

    Args:
        result: the study's `predict` result (part, p_abnormal, threshold, threshold_source, abnormal,
            calibrated, calibration).
        sources: the study's source DICOM datasets (pixels not needed).
        model_name: the model's name as it goes into the SR (BoneNet and the run).
    """
    import highdicom as hd
    from highdicom.sr import (
        CodeContentItem,
        CodedConcept,
        ContainerContentItem,
        NumContentItem,
        TextContentItem,
    )
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    c = _codes()
    code, meaning = PART_CODES[result["part"]]
    items = [
        TextContentItem(c["comment"], NOT_FOR_DIAGNOSTIC_USE, relationship_type="CONTAINS"),
        CodeContentItem(c["finding"], c["abnormal"] if result["abnormal"] else c["normal"], relationship_type="CONTAINS"),
        CodeContentItem(c["site"], CodedConcept(code, "SCT", meaning), relationship_type="CONTAINS"),
        NumContentItem(c["p"], round(float(result["p_abnormal"]), 6), c["unit"], relationship_type="CONTAINS"),
        NumContentItem(c["threshold"], round(float(result["threshold"]), 6), c["unit"], relationship_type="CONTAINS"),
        TextContentItem(c["threshold_source"], result["threshold_source"][:1024], relationship_type="CONTAINS"),
        TextContentItem(c["calibration"], ("calibrated: " if result["calibrated"] else "") + result["calibration"],
                        relationship_type="CONTAINS"),
        TextContentItem(c["algorithm"], model_name[:64], relationship_type="CONTAINS"),
        TextContentItem(c["version"], __version__, relationship_type="CONTAINS"),
    ]
    root = ContainerContentItem(c["report"])
    root.ContentSequence = items
    sr = hd.sr.ComprehensiveSR(
        evidence=sources, content=root, series_instance_uid=generate_uid(), series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="BoneNet", is_complete=True,
        series_description="BoneNet result - not for diagnostic use",
        content_date=datetime.date.today(), content_time=datetime.datetime.now().time())
    scheme = Dataset()
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = PRIVATE, "BoneNet result concepts"
    scheme.CodingSchemeResponsibleOrganization = "BoneNet"
    sr.CodingSchemeIdentificationSequence = [scheme]  # declares the private scheme (PS3.3 C.12.1)
    return sr


def _with_empty_type_2(ds):
    """The source header with each missing `TYPE_2` attribute present and empty (the file is not changed)."""
    for key in TYPE_2:
        if key not in ds:
            setattr(ds, key, "")
    return ds


def _refusal(images, sources):
    """Why a study's sources cannot have one SR (a missing type 1 attribute, or two studies), else None."""
    lacking = [(p, key) for p, ds in zip(images, sources, strict=True) for key in REFERENCED if key not in ds]
    if lacking:
        return f"{lacking[0][0]} has no {lacking[0][1]} (type 1) to reference"
    uids = list(dict.fromkeys(ds.StudyInstanceUID for ds in sources))
    if len(uids) > 1:  # one SR belongs to one study: never file one study's finding in another
        return (f"its images belong to {len(uids)} DICOM studies (StudyInstanceUID {uids[0]} and {uids[1]}); "
                "predict each study's folder on its own")
    return None


def _studies(results):
    """(name, result, image paths) of every decided study in `predict_paths` results; a lone image is a study."""
    in_a_study = {image for r in results if "study" in r for image in r["images"]}
    for r in results:
        if r.get("p_abnormal") is None:
            continue
        if "study" in r:
            yield r["study"], r, r["images"]
        elif r["path"] not in in_a_study:
            yield r["path"], r, [r["path"]]


def write_study_srs(results, out_dir, model_name):
    """Writes one SR per decided study whose images are all DICOM into `out_dir` (each file whole or not at all).

    The rule, beside the study-grouping rule (`bonenet.data.read.group_inputs`): an SR belongs to one
    DICOM study, so a study whose images carry two StudyInstanceUIDs is refused, naming both.

    Returns:
        (paths written, [(study, why no SR was written)]).
    """
    import pydicom
    from pydicom.misc import is_dicom

    written, skipped = [], []
    for name, result, images in _studies(results):
        not_dicom = [p for p in images if not is_dicom(p)]
        if not_dicom:
            skipped.append((name, f"not DICOM ({Path(not_dicom[0]).name}{' …' if len(not_dicom) > 1 else ''}): "
                                  "no DICOM SR for it"))
            continue
        sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in images]
        refusal = _refusal(images, sources)
        if refusal:
            skipped.append((name, f"no DICOM SR: {refusal}"))
            continue
        try:
            sr = study_sr(result, [_with_empty_type_2(ds) for ds in sources], model_name)
        except (AttributeError, ValueError, TypeError) as exc:  # source headers highdicom cannot take
            skipped.append((name, f"no DICOM SR: the source header cannot be referenced ({exc})".splitlines()[0]))
            continue
        out = Path(out_dir) / f"SR_{short_name(result['part'])}_{sr.SOPInstanceUID}.dcm"
        out.parent.mkdir(parents=True, exist_ok=True)
        with file_written_whole(out) as tmp:
            sr.save_as(tmp, enforce_file_format=True)
        written.append(out)
    return written, skipped


def closing_line(written, skipped, out_dir):
    """The one line `predict --dicom-out` ends with: what was written, what was refused, and why."""
    if not written and not skipped:
        return "no DICOM SR written: no study was decided"
    why = {}
    for _, reason in skipped:
        kind = ("not DICOM" if reason.startswith("not DICOM") else "lacking a type 1 attribute" if "(type 1)" in reason
                else "mixing DICOM studies" if "DICOM studies" in reason else "a header highdicom cannot take")
        why[kind] = why.get(kind, 0) + 1
    refused = "; ".join(f"{n} {kind}" for kind, n in why.items())
    return f"wrote {len(written)} DICOM SR(s) into {out_dir}" + (f"; {len(skipped)} refused ({refused})" if skipped else "")
