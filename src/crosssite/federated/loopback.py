"""A Flower deployment of crosssite on 127.0.0.1: credentials, SuperLink, one SuperNode per site, `flwr run`.

What the deployment test runs, and what docs/federated.md's commands do by hand: TLS everywhere (a CA, a
certificate for the SuperLink) and SuperNode authentication (each site's EC P-384 key, registered with
`flwr supernode register` before it connects) unless `insecure` is asked for. Every process gets
FLWR_TELEMETRY_ENABLED=0, FLWR_DISABLE_UPDATE_CHECK=1 and its own FLWR_HOME; the SuperLink runs with
--disable-runtime-dependency-installation (a hospital node is offline). Processes are started in their own
process group and stopped by that PID (Flower starts helper processes: SuperExec, ServerApp, ClientApp).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..config import TrainConfig
from .settings import FedSettings

QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
#: how often the SuperExec of the SuperLink and of each SuperNode looks for a task to start (Flower's
#: default: 1 s); a shorter one makes each message wait less for its ClientApp, at a few requests a second
POLL = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_credentials(folder: Path, nodes: list[str]) -> dict[str, Path]:
    """A CA, the SuperLink's certificate for 127.0.0.1 and localhost (signed by it), and per node an EC P-384
    key pair in OpenSSH format (Flower's SuperNode authentication). Returns the file of each."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, key, signer, ca: bool, names=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crosssite federation CA")])
    ca = certificate(ca_name, ca_name, ca_key, ca_key, ca=True)
    server = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name, server_key,
                         ca_key, ca=False, names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                  x509.DNSName("localhost")])
    files = {"ca": folder / "ca.crt", "server_cert": folder / "server.pem", "server_key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["server_cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["server_key"].write_bytes(pem_key(server_key))
    for node in nodes:
        key = ec.generate_private_key(ec.SECP384R1())
        files[f"{node}_key"] = folder / f"{node}.key"
        files[f"{node}_pub"] = folder / f"{node}.pub"
        files[f"{node}_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.OpenSSH,
                                                           serialization.NoEncryption()))
        files[f"{node}_pub"].write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                       serialization.PublicFormat.OpenSSH))
    return files


def write_app(folder: Path, config: TrainConfig, settings: FedSettings) -> Path:
    """A Flower App (pyproject.toml) whose ServerApp and ClientApp are crosssite's; settings as run config
    (`out`, `train.*`, `fed.*`, values JSON-encoded)."""
    folder.mkdir(parents=True, exist_ok=True)
    run = {"out": config.out, **{f"train.{k}": json.dumps(v) for k, v in config.to_dict().items()
                                 if k not in ("out", "data", "sites")},
           **{f"fed.{k}": json.dumps(v) for k, v in settings.to_dict().items()}}
    lines = ['[build-system]', 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', '',
             '[project]', 'name = "crosssite-federation"', 'version = "1.0.0"', 'dependencies = []',
             'description = "crosssite federated training"', 'license = "MIT"', '',
             '[tool.hatch.build.targets.wheel]', 'packages = ["."]', '',
             '[tool.flwr.app]', 'publisher = "crosssite"', '',
             '[tool.flwr.app.components]', 'serverapp = "crosssite.federated.flower:server_app"',
             'clientapp = "crosssite.federated.flower:client_app"', '', '[tool.flwr.app.config]',
             *(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in run.items())]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


class Deployment:
    """SuperLink + SuperNodes on 127.0.0.1 (free ports), TLS and SuperNode authentication unless `insecure`."""

    def __init__(self, folder: Path, insecure: bool = False):
        self.folder, self.insecure = Path(folder), insecure
        self.home = self.folder / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, **QUIET, **POLL, "FLWR_HOME": str(self.home),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.files: dict[str, Path] = {}

    def tool(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def start_superlink(self, nodes: list[str]) -> None:
        tls: list[str] = ["--insecure"]
        if not self.insecure:
            self.files = make_credentials(self.folder / "credentials", nodes + ["stranger"])
            tls = ["--ssl-ca-certfile", str(self.files["ca"]), "--ssl-certfile", str(self.files["server_cert"]),
                   "--ssl-keyfile", str(self.files["server_key"]), "--enable-supernode-auth"]
        self._start("superlink", [self.tool("flower-superlink"), *tls, "--disable-runtime-dependency-installation",
                                  "--host", "127.0.0.1", "--port", str(self.port)])
        connection = [f'address = "127.0.0.1:{self.port}"',
                      "insecure = true" if self.insecure else f'root-certificates = "{self.files["ca"]}"']
        (self.home / "config.toml").write_text('[superlink]\ndefault = "loop"\n\n[superlink.loop]\n'
                                               + "\n".join(connection) + "\n")
        self._wait_for_port()

    def register(self, *nodes: str) -> None:
        """Register each node's public key with the SuperLink (what a federation's operator does per
        hospital), one `flwr supernode register` each, side by side."""
        self.flwr(*[("supernode", "register", str(self.files[f"{node}_pub"]), "loop") for node in nodes])

    def start_supernode(self, node: str, site: str, path: Path, out: Path) -> subprocess.Popen:
        auth = ["--insecure"] if self.insecure else ["--root-certificates", str(self.files["ca"]),
                                                     "--auth-supernode-private-key", str(self.files[f"{node}_key"])]
        return self._start(node, [self.tool("flower-supernode"), *auth, "--superlink", f"127.0.0.1:{self.port}",
                                  "--host", "127.0.0.1", "--port", str(free_port()), "--max-retries", "3",
                                  "--node-config", f"site='{site}' path='{path}' out='{out}'"])

    def flwr(self, *commands: tuple[str, ...]) -> None:
        """Run `flwr` commands side by side; raise if one fails."""
        running = [(args, subprocess.Popen([self.tool("flwr"), *args], env=self.env, cwd=self.folder, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)) for args in commands]
        for args, process in running:
            output, _ = process.communicate(timeout=120)
            if process.returncode:
                raise RuntimeError(f"flwr {' '.join(args)} failed: {output[-2000:]}")

    def start_run(self, app: Path) -> None:
        """`flwr run` the app (it returns once the SuperLink has the run)."""
        self.flwr(("run", str(app), "loop"))

    def run(self, app: Path, out: Path, timeout: float) -> dict:
        """`flwr run` the app and wait for the federation's summary.json."""
        self.start_run(app)
        return self.wait(out, timeout)

    def wait(self, out: Path, timeout: float) -> dict:
        """The federation's summary.json, once the ServerApp has written it."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if (out / "summary.json").exists():
                return json.loads((out / "summary.json").read_text())
            time.sleep(0.2)
        raise TimeoutError(f"no {out / 'summary.json'} after {timeout} s; logs in {self.folder}")

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        self.processes[name] = subprocess.Popen(command, env=self.env, cwd=self.folder, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)
        return self.processes[name]

    def _wait_for_port(self, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"SuperLink not listening on 127.0.0.1:{self.port}; see {self.folder / 'superlink.log'}")

    def stop(self) -> None:
        """Stop every process this deployment started, with the helpers it started (its process group, by PID)."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
