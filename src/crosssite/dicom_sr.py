"""A scan's result as a DICOM Comprehensive SR (highdicom, the `dicom-out` extra), for a hospital's PACS.

One SR per DICOM series read, in the source's study (StudyInstanceUID and the patient and study modules
copied from the series by highdicom), its own new series; the source series' instances are listed in
the Current Requested Procedure Evidence Sequence. The content is a TID 1500 Measurement Report with
one measurement group (TID 1501) for the whole series:
  - measurement   (99CROSSSITE, P-COVID, "Probability of COVID-19, calibrated"), unit UCUM "1": the scan's
                  calibrated P(COVID), the value `predict --json` prints as the scan's p_covid;
  - evaluation    (SCT 840539006, "COVID-19") = SCT Present / Absent: the label at the operating point;
  - evaluation    (99CROSSSITE, OOD, "Out of distribution for the model") = SCT Yes / No, when the model
                  has OOD thresholds;
  - algorithm identification (TID 4019): name, crosssite version, and as parameters the training sites,
                  the site whose batch norms predicted, the checkpoint's SHA-256, the threshold and its
                  rule, the calibration, and NOT_FOR_CLINICAL_USE.
The SR is marked complete, unverified and not final, and its series description says it is not for
clinical use. Codes of the local scheme 99CROSSSITE are crosssite's own (DICOM PS3.16 8.2 allows private
schemes with the 99 prefix); the others are SNOMED CT and UCUM codes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from . import __version__
from .errors import CrossSiteError, require_extra

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE: research software, not validated for diagnosis"
SERIES_DESCRIPTION = "crosssite COVID-19 research result, NOT FOR CLINICAL USE"
LOCAL_SCHEME = "99CROSSSITE"
SERIES_NUMBER = 9901


def _highdicom():
    return require_extra("highdicom", "--dicom-out", "dicom-out")


def codes():
    """The coded concepts the SR uses, by role."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes as dicom_codes

    return {
        "probability": CodedConcept("P-COVID", LOCAL_SCHEME, "Probability of COVID-19, calibrated"),
        "finding": CodedConcept("840539006", "SCT", "COVID-19"),
        "ood": CodedConcept("OOD", LOCAL_SCHEME, "Out of distribution for the model"),
        "unit": CodedConcept("1", "UCUM", "no units"),
        "procedure": CodedConcept("24627-2", "LN", "CT Chest"),
        "present": dicom_codes.SCT.Present, "absent": dicom_codes.SCT.Absent,
        "yes": dicom_codes.SCT.Yes, "no": dicom_codes.SCT.No, "device": dicom_codes.DCM.Device,
    }


#: patient and general study attributes (Type 2: present, may be empty) the SR copies from its source
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def complete_header(source):
    """A copy of a source header with any missing Type 2 patient / study attribute present and empty
    (series written by research tools often lack them; the SR must still carry them)."""
    copied = source.copy()
    for keyword in COPIED_TYPE2:
        if keyword not in copied:
            setattr(copied, keyword, "")
    return copied


def structured_report(sources: list, result: dict, model: dict):
    """The SR dataset for one series.

    `sources`: the series' headers (pydicom datasets, as crosssite.data.volumes.dicom_headers gives them);
    `result`: the scan's predict row (p_covid calibrated, label, threshold, ood, site);
    `model`: model_facts' name, version, training_sites, checkpoint_sha256, and the operating_point and
    calibration texts of the predicting site.
    """
    hd = _highdicom()
    from pydicom import Dataset
    from pydicom.uid import generate_uid

    c = codes()
    parameters = [f"training sites: {', '.join(model['training_sites'])}",
                  f"batch norms of site: {result['site']}",
                  f"checkpoint sha256: {model['checkpoint_sha256']}",
                  f"threshold {result['threshold']:.6g} ({model['operating_point']})",
                  f"calibration: {model['calibration']}",
                  NOT_FOR_CLINICAL_USE]
    evaluations = [hd.sr.QualitativeEvaluation(c["finding"], c["present"] if result["label"] == "COVID" else c["absent"])]
    if result.get("ood") is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(c["ood"], c["yes"] if result["ood"] else c["no"]))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="crosssite scan result"),
        algorithm_id=hd.sr.AlgorithmIdentification(name=model["name"], version=model["version"],
                                                   parameters=parameters),
        measurements=[hd.sr.Measurement(name=c["probability"], value=float(result["p_covid"]), unit=c["unit"])],
        qualitative_evaluations=evaluations,
    )
    observer = hd.sr.ObserverContext(
        observer_type=c["device"],
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=model["name"], manufacturer_name="crosssite", model_name=model["name"]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=c["procedure"], imaging_measurements=[group])
    with warnings.catch_warnings():  # the patient's name is copied as the source has it, not composed here
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        sr = hd.sr.ComprehensiveSR(
            evidence=[complete_header(ds) for ds in sources], content=report, series_instance_uid=generate_uid(),
            series_number=SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
            manufacturer="crosssite", manufacturer_model_name=model["name"], software_versions=model["version"],
            series_description=SERIES_DESCRIPTION, is_complete=True, is_final=False, is_verified=False)
    scheme = Dataset()
    scheme.CodingSchemeDesignator, scheme.CodingSchemeName = LOCAL_SCHEME, "crosssite local codes"
    scheme.CodingSchemeResponsibleOrganization = "crosssite"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def write_report(folder: Path, sources: list, result: dict, model: dict) -> Path:
    """Write the SR of one series into `folder` as SR_<SOPInstanceUID>.dcm (atomically); return its path."""
    from .io import atomic_write

    sr = structured_report(sources, result, model)
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CrossSiteError(f"--dicom-out {folder}: cannot create ({e.strerror})") from None
    path = folder / f"SR_{sr.SOPInstanceUID}.dcm"
    atomic_write(path, lambda tmp: sr.save_as(tmp, enforce_file_format=True))
    return path


def model_facts(method: str, backbone: str, site_names: list[str], adapted: list[str], checkpoint_sha256: str) -> dict:
    """What the SR says about the model (structured_report's `model`, less the per-site decision texts)."""
    return {"name": f"crosssite {method} ({backbone})", "version": __version__,
            "training_sites": [s for s in site_names if s not in adapted]
                              + [f"{s} (batch norms adapted, unlabelled)" for s in adapted],
            "checkpoint_sha256": checkpoint_sha256}


def write_reports(rows: list[dict], folder: Path, model: dict) -> tuple[list[Path], list[str]]:
    """One SR per DICOM series among predict's rows (its slices' headers as evidence); returns the files
    written and one note per input that got none (an image file, a NIfTI or MetaImage volume)."""
    from .data.volumes import dicom_headers, parse_slice

    written, notes = [], []
    for row in rows:
        if "slices" not in row:
            notes.append(f"{row['path']}: not a DICOM series (an image file): no SR")
            continue
        headers = dicom_headers(row["path"])
        if headers is None:
            notes.append(f"{row['path']}: not a DICOM series (a volume file): no SR")
            continue
        sources = [headers[parse_slice(s["path"])[1]] for s in row["slices"]]
        written.append(write_report(folder, sources, row, {**model, "operating_point": row["operating_point"],
                                                           "calibration": row["calibration"]}))
    return written, notes
