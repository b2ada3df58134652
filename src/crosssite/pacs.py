"""Sending DICOM files to a PACS by C-STORE (pynetdicom, the `dicom-out` extra): `predict --send HOST:PORT`.

One association per call, each file stored as its own SOP class in Explicit VR Little Endian (how
crosssite writes SRs). A refused or failed association, or a non-zero status, is one CrossSiteError line
naming the file and the PACS; files are only read, so whatever was written stays in --dicom-out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import CrossSiteError, require_extra

DEFAULT_CALLING_AE = "CROSSSITE"
DEFAULT_CALLED_AE = "ORTHANC"
TIMEOUT_S = 30


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CrossSiteError(f"--send {text!r}: expected HOST:PORT, e.g. --send 127.0.0.1:4242")
    return host, int(port)


def _check_ae(title: str, flag: str) -> str:
    if not 0 < len(title) <= 16 or not title.isascii() or "\\" in title or not title.strip():
        raise CrossSiteError(f"{flag} {title!r}: an AE title is 1-16 ASCII characters without backslash")
    return title


def send(files: list[Path], address: str, called_ae: str = DEFAULT_CALLED_AE,
         calling_ae: str = DEFAULT_CALLING_AE) -> None:
    """C-STORE every file to the PACS at `address` (HOST:PORT)."""
    host, port = parse_address(address)
    _check_ae(called_ae, "--called-ae")
    _check_ae(calling_ae, "--calling-ae")
    pydicom = require_extra("pydicom", "--send", "dicom-out")
    AE = require_extra("pynetdicom", "--send", "dicom-out").AE
    logging.getLogger("pynetdicom").addHandler(logging.NullHandler())  # its log lines are not ours to print
    datasets = [(Path(f), pydicom.dcmread(f)) for f in files]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    for sop_class in dict.fromkeys(ds.SOPClassUID for _, ds in datasets):
        ae.add_requested_context(sop_class, pydicom.uid.ExplicitVRLittleEndian)
    where = f"PACS {called_ae}@{host}:{port}"
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "unreachable or aborted"
        raise CrossSiteError(f"--send: association with {where} as {calling_ae} failed ({why}); "
                             f"the files stay in {Path(files[0]).parent}")
    try:
        for path, ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code != 0x0000:
                detail = "no response" if code is None else f"status 0x{code:04X}"
                raise CrossSiteError(f"{path}: C-STORE to {where} failed ({detail}); the file stays where it is")
    finally:
        assoc.release()
