"""`predict --dicom-out`: a DICOM Structured Report per study read from DICOM, back into the source study."""

import json
import shutil
import subprocess

import pytest

from bonenet.imageio import load_gray

pytest.importorskip("highdicom", reason="highdicom is not installed: pip install \"bonenet[dicom]\"")

import pydicom
from highdicom.sr import srread
from pydicom.uid import generate_uid


def _predict(args, capsys):
    import run_pipeline

    code = run_pipeline.main([str(a) for a in ["predict", *args]])
    out, err = capsys.readouterr()
    return code, out, err


def _content(sr):
    """{concept meaning: value} of the SR's root container."""
    values = {}
    for item in sr.content[0].ContentSequence:
        value = getattr(item, "value", None)
        values[item.name.meaning] = value.meaning if hasattr(value, "meaning") else value
    return values


@pytest.fixture
def dicom_study(tmp_path, wrist_study, write_dicom):
    """A study folder of the session's wrist views as DICOM, with one study and series as a PACS holds them."""
    folder = tmp_path / "study"
    folder.mkdir()
    uids = (generate_uid(), generate_uid())
    paths = [write_dicom(folder / f"view{i}.dcm", load_gray(p), study=uids) for i, p in enumerate(wrist_study[:2])]
    return folder, uids, paths


def test_a_dicom_study_gets_an_sr_in_its_own_study_referencing_every_source_image(run, dicom_study, tmp_path, capsys):
    folder, (study_uid, series_uid), paths = dicom_study
    code, out, err = _predict([folder, "--models-dir", run[0], "--dicom-out", tmp_path / "sr",
                               "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    written = sorted((tmp_path / "sr").glob("*.dcm"))
    assert len(written) == 1 and f"wrote 1 DICOM SR(s) into {tmp_path / 'sr'}" in out
    result = next(r for r in json.loads((tmp_path / "r.json").read_text()) if "study" in r)
    sr = srread(written[0])
    sources = [pydicom.dcmread(p) for p in paths]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.Modality == "SR"  # Comprehensive SR
    assert sr.StudyInstanceUID == study_uid and sr.SeriesInstanceUID not in (series_uid, "")
    assert (sr.PatientID, str(sr.PatientName), sr.PatientBirthDate, sr.AccessionNumber) == \
        ("BN-0001", "Test^Patient", "19700101", "ACC-1")  # the patient module copied from the source
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == study_uid
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == series_uid
    assert {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in series.ReferencedSOPSequence} == \
        {(s.SOPClassUID, s.SOPInstanceUID) for s in sources}
    values = _content(sr)
    assert values["Finding"] == ("Abnormal" if result["abnormal"] else "Normal")
    assert values["Finding site"] == "Wrist" and result["part"] == "XR_WRIST"
    assert float(values["Probability of abnormality"]) == pytest.approx(result["p_abnormal"], abs=1e-6)
    assert float(values["Decision threshold"]) == pytest.approx(result["threshold"], abs=1e-6)
    assert values["Decision threshold source"] == result["threshold_source"]
    assert values["Probability calibration"].endswith(result["calibration"])
    assert values["Algorithm Name"] == f"BoneNet {run[0].name}" and values["Algorithm Version"]
    assert values["Comment"].startswith("NOT FOR DIAGNOSTIC USE")
    if shutil.which("dciodvfy"):  # Debian's dicom3tools: the SR is valid DICOM (warnings only for our private codes)
        check = subprocess.run(["dciodvfy", str(written[0])], capture_output=True, text=True)
        assert not [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")], \
            check.stdout + check.stderr


def test_non_dicom_inputs_never_produce_dicom_and_the_command_says_so(run, wrist_study, tmp_path, capsys):
    code, out, err = _predict([wrist_study[0], "--models-dir", run[0], "--dicom-out", tmp_path / "sr"], capsys)
    assert code == 0, err
    assert not list(tmp_path.glob("sr/*"))
    assert f"{wrist_study[0]}: not DICOM" in err and "no DICOM SR written" in out


def test_a_dicom_without_study_uids_is_skipped_with_its_reason(run, wrist_study, tmp_path, capsys, write_dicom):
    bare = write_dicom(tmp_path / "bare.dcm", load_gray(wrist_study[0]))
    code, out, err = _predict([bare, "--models-dir", run[0], "--dicom-out", tmp_path / "sr"], capsys)
    assert code == 0 and not list(tmp_path.glob("sr/*"))
    assert f"{bare}: no DICOM SR: {bare} has no StudyInstanceUID to reference" in err
