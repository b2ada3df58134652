"""A Flower deployment of crosssite on 127.0.0.1: credentials, SuperLink, one SuperNode per site, `flwr run`.

What `crosssite federate --flower` and the deployment test run, and what docs/federated.md's commands do by hand: TLS everywhere (a CA, a
certificate for the SuperLink) and SuperNode authentication (each site's EC P-384 key, registered with
`flwr supernode register` before it connects) unless `insecure` is asked for. Every process gets
FLWR_TELEMETRY_ENABLED=0, FLWR_DISABLE_UPDATE_CHECK=1 and its own FLWR_HOME; the SuperLink runs with
--disable-runtime-dependency-installation (a hospital node is offline). Processes are started in their own
process group and stopped by that PID (Flower starts helper processes: SuperExec, ServerApp, ClientApp).
"""

from __future__ import annotations

import contextlib
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
from ..data.sites import load_sites
from ..errors import CrossSiteError, require_extra
from .settings import FedSettings

QUIET = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
#: how often the SuperExec of the SuperLink and of each SuperNode looks for a task to start (Flower's
#: default: 1 s); a shorter one makes each message wait less for its ClientApp, at a few requests a second
POLL = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_credentials(folder: Path) -> dict[str, Path]:
    """A CA and the SuperLink's certificate for 127.0.0.1 and localhost, signed by it. Returns their files."""
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

    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crosssite federation CA")])
    ca = certificate(ca_name, ca_name, ca_key, ca_key, ca=True)
    server = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name, server_key,
                         ca_key, ca=False, names=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                  x509.DNSName("localhost")])
    files = {"ca": folder / "ca.crt", "server_cert": folder / "server.pem", "server_key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["server_cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["server_key"].write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                                             serialization.NoEncryption()))
    return files


def make_node_key(folder: Path, node: str) -> tuple[Path, Path]:
    """A node's EC P-384 key pair in OpenSSH format (Flower's SuperNode authentication): (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"{node}.key", folder / f"{node}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return private, public


def coordinator_config(config: TrainConfig) -> TrainConfig:
    """The training settings as the ServerApp gets them (and writes in OUT/config.yaml): no site's folder, which
    is each SuperNode's own node config."""
    return config.replace(data=None, sites=[])


def write_app(folder: Path, config: TrainConfig, settings: FedSettings) -> Path:
    """A Flower App (pyproject.toml) whose ServerApp and ClientApp are crosssite's; settings as run config
    (`out`, `train.*`, `fed.*`, values JSON-encoded)."""
    folder.mkdir(parents=True, exist_ok=True)
    run = {"out": config.out, **{f"train.{k}": json.dumps(v) for k, v in coordinator_config(config).to_dict().items()
                                 if k != "out"},
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
        self.folder, self.insecure = Path(folder).resolve(), insecure  # its processes run in it
        self.home = self.folder / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, **QUIET, **POLL, "FLWR_HOME": str(self.home),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.files: dict[str, Path] = {}
        self.started = 0.0  # when the run was handed to the SuperLink (start_run)

    def tool(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    def node_key(self, node: str) -> tuple[Path, Path]:
        """The node's key pair (private, public), made on first use."""
        if f"{node}_key" not in self.files:
            self.files[f"{node}_key"], self.files[f"{node}_pub"] = make_node_key(self.folder / "credentials", node)
        return self.files[f"{node}_key"], self.files[f"{node}_pub"]

    def start_superlink(self) -> None:
        tls: list[str] = ["--insecure"]
        if not self.insecure:
            self.files = make_credentials(self.folder / "credentials")
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
        self.flwr(*[("supernode", "register", str(self.node_key(node)[1]), "loop") for node in nodes])

    def start_supernode(self, node: str, site: str, path: Path, out: Path) -> subprocess.Popen:
        auth = ["--insecure"] if self.insecure else ["--root-certificates", str(self.files["ca"]),
                                                     "--auth-supernode-private-key", str(self.node_key(node)[0])]
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
        self.started = time.time()
        self.flwr(("run", str(app), "loop"))

    def wait(self, out: Path, timeout: float | None = None) -> dict:
        """The federation's summary.json once the ServerApp has written it for the run started last (an older
        one in a resumed OUT does not count). Raises if the SuperLink stops or Flower says the run ended
        without one."""
        summary, started = out / "summary.json", time.time()

        def written() -> bool:
            return summary.exists() and summary.stat().st_mtime >= self.started

        checked = started
        while timeout is None or time.time() < started + timeout:
            if written():
                return json.loads(summary.read_text())
            if self.processes["superlink"].poll() is not None:
                raise CrossSiteError(f"the SuperLink stopped before the federation ended; see {self.folder / 'superlink.log'}")
            if time.time() > checked + 15:  # asking Flower costs a `flwr` process: not every poll
                checked = time.time()
                ended = [r["status"] for r in self.runs() if r["status"].startswith("finished")]
                if ended and not written():
                    raise CrossSiteError(f"the Flower run ended ({ended[-1]}) without {summary}; "
                                         f"see {self.folder / 'superlink.log'}")
            time.sleep(0.2)
        raise TimeoutError(f"no {summary} after {timeout} s; logs in {self.folder}")

    def runs(self) -> list[dict]:
        """The SuperLink's runs as `flwr ls --format json` gives them (status e.g. running, finished:failed)."""
        listing = subprocess.run([self.tool("flwr"), "ls", "loop", "--format", "json"], env=self.env, cwd=self.folder,
                                 capture_output=True, text=True, timeout=120)
        try:
            return json.loads(listing.stdout).get("runs", [])
        except json.JSONDecodeError:
            return []

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


@contextlib.contextmanager
def flower_federation(config: TrainConfig, settings: FedSettings, resume: bool = False, insecure: bool = False):
    """The federation of every site of `config` started as a Flower deployment on this machine: a SuperLink, one
    SuperNode per site reading only that site's folder, crosssite's ServerApp and ClientApp, TLS and registered
    node keys unless `insecure`; processes, keys and logs in OUT/flower. Yields the running `Deployment`;
    everything is stopped on leaving."""
    from .local import prepare_federation

    require_flower()
    out = Path(config.out).resolve()  # the SuperLink's and SuperNodes' processes run elsewhere
    config = config.replace(out=str(out))
    prepare_federation(coordinator_config(config), settings, resume)  # what the ServerApp then continues
    sites = load_sites(Path(config.data) if config.data else None, config.sites, config.slices)
    nodes = [f"node-{i}" for i in range(len(sites))]
    with Deployment(out / "flower", insecure=insecure) as deployment:
        deployment.start_superlink()
        if not insecure:
            deployment.register(*nodes)
        for node, (name, site) in zip(nodes, sites.items()):
            deployment.start_supernode(node, name, Path(site.root).resolve(), out / name)
        deployment.start_run(write_app(out / "flower" / "app", config, settings))
        yield deployment


def federate_over_flower(config: TrainConfig, settings: FedSettings, resume: bool = False,
                         insecure: bool = False) -> dict:
    """`crosssite federate --flower`: the federation deployed on this machine, run to its end; the same result as
    the in-machine run (tests/federated/test_deployment.py). Returns summary.json."""
    with flower_federation(config, settings, resume, insecure) as deployment:
        return deployment.wait(Path(config.out).resolve())


def require_flower() -> None:
    """One line naming the extra where Flower is not installed (the in-machine federate needs none)."""
    require_extra("flwr", "a Flower deployment (--flower, --flower-app)", "fed")
