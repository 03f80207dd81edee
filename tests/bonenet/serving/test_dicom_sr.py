"""`predict --dicom-out`: a DICOM Structured Report per study read from DICOM, back into the source study."""

import json
import shutil
import subprocess

import pytest

from bonenet.data.decode import load_gray

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
    assert f"{wrist_study[0]}: not DICOM" in err
    assert f"wrote 0 DICOM SR(s) into {tmp_path / 'sr'}; 1 refused (1 not DICOM)" in out


def test_a_dicom_without_study_uids_is_skipped_with_its_reason(run, wrist_study, tmp_path, capsys, write_dicom):
    bare = write_dicom(tmp_path / "bare.dcm", load_gray(wrist_study[0]))
    code, out, err = _predict([bare, "--models-dir", run[0], "--dicom-out", tmp_path / "sr"], capsys)
    assert code == 0 and not list(tmp_path.glob("sr/*"))
    assert f"{bare}: no DICOM SR: {bare} has no StudyInstanceUID (type 1) to reference" in err
    assert "wrote 0 DICOM SR(s)" in out and "1 refused (1 lacking a type 1 attribute)" in out


def _dciodvfy_errors(path):
    """dciodvfy's error lines for a file (Debian's dicom3tools), or None where it is not installed."""
    if not shutil.which("dciodvfy"):
        return None
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")]


def _anonymised(path):
    """The DICOM at `path` without any type 2 patient or study attribute, as anonymisers leave them."""
    from bonenet.serving.dicom_sr import TYPE_2

    ds = pydicom.dcmread(path)
    for key in TYPE_2:
        if key in ds:
            delattr(ds, key)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.corpus("D1")
def test_an_anonymised_dicom_without_type_2_attributes_gets_an_sr_with_them_empty(run, wrist_study, tmp_path, capsys,
                                                                                   write_dicom):
    from bonenet.serving.dicom_sr import TYPE_2

    study_uid = generate_uid()
    source = _anonymised(write_dicom(tmp_path / "anon.dcm", load_gray(wrist_study[0]),
                                     study=(study_uid, generate_uid())))
    assert not [key for key in TYPE_2 if key in pydicom.dcmread(source)]
    code, out, err = _predict([source, "--models-dir", run[0], "--dicom-out", tmp_path / "sr"], capsys)
    assert code == 0, err
    assert f"wrote 1 DICOM SR(s) into {tmp_path / 'sr'}" in out and "refused" not in out and "no DICOM SR" not in err
    (written,) = sorted((tmp_path / "sr").glob("*.dcm"))
    sr, plain = srread(written), pydicom.dcmread(written)
    assert sr.StudyInstanceUID == plain.StudyInstanceUID == study_uid
    assert all(key in plain and plain.data_element(key).value in ("", None) for key in TYPE_2), \
        {key: plain.get(key) for key in TYPE_2}
    assert _dciodvfy_errors(written) in (None, [])


@pytest.mark.corpus("D2")
def test_a_non_ascii_patient_name_in_utf8_survives_into_the_sr(run, wrist_study, tmp_path, capsys, write_dicom):
    source = write_dicom(tmp_path / "utf8.dcm", load_gray(wrist_study[0]), study=(generate_uid(), generate_uid()))
    ds = pydicom.dcmread(source)
    ds.SpecificCharacterSet, ds.PatientName = "ISO_IR 192", "Müller^Zoë^Ångström"
    ds.save_as(source, enforce_file_format=True)
    code, out, err = _predict([source, "--models-dir", run[0], "--dicom-out", tmp_path / "sr"], capsys)
    assert code == 0, err
    (written,) = sorted((tmp_path / "sr").glob("*.dcm"))
    for back in (srread(written), pydicom.dcmread(written)):
        assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "Müller^Zoë^Ångström"
    assert _dciodvfy_errors(written) in (None, [])


@pytest.mark.corpus("D3")
def test_a_folder_mixing_two_dicom_studies_gets_no_sr_naming_both(run, wrist_study, tmp_path, capsys, write_dicom):
    folder = tmp_path / "mixed"
    folder.mkdir()
    uids = [generate_uid(), generate_uid()]
    for i, uid in enumerate(uids):
        write_dicom(folder / f"view{i}.dcm", load_gray(wrist_study[i]), study=(uid, generate_uid()))
    code, out, err = _predict([folder, "--models-dir", run[0], "--dicom-out", tmp_path / "sr"], capsys)
    assert code == 0 and not list(tmp_path.glob("sr/*"))
    assert f"{folder}: no DICOM SR: its images belong to 2 DICOM studies (StudyInstanceUID {uids[0]} and {uids[1]})" \
        in err
    assert "1 refused (1 mixing DICOM studies)" in out
