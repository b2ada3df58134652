"""Start a throw-away Orthanc PACS on 127.0.0.1 (free DICOM and HTTP ports, a temporary folder) and stop it.

Used by tests/test_pacs.py and by hand:

    python scripts/orthanc.py --calling-ae CROSSSITE     # prints the ports and PID, runs until Ctrl-C

The configuration accepts C-STORE only from the AE title `calling_ae` on 127.0.0.1 (DicomAlwaysAllowStore
false, the AE listed under DicomModalities), so a test can also see a wrong AE refused. HTTP (the REST
API) listens on 127.0.0.1 only, without authentication. Needs the `Orthanc` executable (Debian: apt-get
install orthanc); the packaged service is not used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CALLED_AE = "ORTHANC"
START_TIMEOUT_S = 30


def executable() -> str | None:
    return shutil.which("Orthanc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    process: subprocess.Popen
    folder: Path
    dicom_port: int
    http_port: int
    called_ae: str = CALLED_AE

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read()

    def get_json(self, path: str):
        return json.loads(self.get(path))

    def stop(self) -> None:
        """Stop this Orthanc by its PID and remove its folder."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start(calling_ae: str = "CROSSSITE", folder: Path | None = None) -> Orthanc:
    """Start Orthanc and wait until its REST API answers; RuntimeError if it does not within the timeout."""
    binary = executable()
    if binary is None:
        raise RuntimeError("Orthanc is not installed (apt-get install orthanc)")
    folder = Path(folder or tempfile.mkdtemp(prefix="crosssite-orthanc-"))
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "crosssite-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "DicomAet": CALLED_AE, "DicomPort": dicom_port, "HttpPort": http_port, "DicomServerEnabled": True,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
        "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowEcho": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"crosssite": {"AET": calling_ae, "Host": "127.0.0.1", "Port": 104, "AllowStore": True}},
        "Plugins": [], "ConcurrentJobs": 1, "HttpThreadsCount": 4, "StorageCompression": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
    log = open(folder / "orthanc.log", "w")
    process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                               cwd=folder)
    server = Orthanc(process, folder, dicom_port, http_port)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        if process.poll() is not None:
            text = (folder / "orthanc.log").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"Orthanc exited with {process.returncode} at start:\n{text}")
        try:
            server.get_json("/system")
            return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer on {server.url} within {START_TIMEOUT_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calling-ae", default="CROSSSITE")
    args = parser.parse_args()
    server = start(args.calling_ae)
    print(f"Orthanc PID {server.process.pid}: DICOM {server.called_ae}@127.0.0.1:{server.dicom_port}, "
          f"REST {server.url}, accepts C-STORE from {args.calling_ae}; Ctrl-C stops it")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
