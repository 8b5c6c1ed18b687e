"""Session fixtures: a real redis-server on a free port, shared-data locations."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """Terminate the servers, then kill the ones still running after 5 s."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """A redis-server process owned by the test session."""

    def __init__(self, tmp: Path, *, extra: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.dir = tmp
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe is not None
        self.process = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop_processes([self.process])
        self.process = None


@pytest.fixture(scope="session", autouse=True)
def content_kernels_compiled() -> None:
    """A Guard compiles its content kernels in a background thread and decides without
    content until they are ready; the tests expect content from the first request. Same
    for the decision kernels: a Guard that finds them neither compiled nor in Numba's
    cache runs their Python twin until they are (tests/test_cold_start.py tests that)."""
    from abuseguard.engine import kernel_set
    from abuseguard.intel._content_kernels import compile_kernels

    kernel_set.compiled()
    compile_kernels()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed: `make test` installs Debian's redis-server")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisClusterServers:
    """A 3-primary Redis Cluster (no replicas) owned by the test session."""

    def __init__(self, tmp: Path, nodes: int = 3) -> None:
        self.dir = tmp
        self.ports = [_free_cluster_port() for _ in range(nodes)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        assert exe is not None and cli is not None
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir(exist_ok=True)
            self.processes.append(
                subprocess.Popen(
                    [
                        exe,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        "2000",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(node_dir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            wait_for_port(port)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    [cli, "-p", str(p), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                for p in self.ports
            ]
            if all("cluster_state:ok" in s for s in states):
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        stop_processes(self.processes)
        self.processes.clear()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip(
            "the Redis Cluster tests need redis-server and redis-cli (Debian's "
            "redis-server package has both)"
        )
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _openssl(openssl: str, *args: str, cwd: Path) -> None:
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(openssl: str, tmp: Path, name: str) -> tuple[Path, Path]:
    """A throwaway self-signed CA (EC P-256, valid one day): (certificate, key)."""
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    _openssl(
        openssl,
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key.name,
        "-out",
        cert.name,
        "-days",
        "1",
        "-subj",
        f"/CN=abuseguard test {name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=tmp,
    )
    return cert, key


def make_server_cert(openssl: str, tmp: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by ``ca``: (cert, key)."""
    cert, key, csr, ext = (tmp / f"server.{s}" for s in ("crt", "key", "csr", "ext"))
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        openssl,
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        key.name,
        "-out",
        csr.name,
        "-subj",
        "/CN=localhost",
        cwd=tmp,
    )
    _openssl(
        openssl,
        "x509",
        "-req",
        "-in",
        csr.name,
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-out",
        cert.name,
        "-days",
        "1",
        "-extfile",
        ext.name,
        cwd=tmp,
    )
    return cert, key


class RedisTLSServer:
    """A redis-server that only speaks TLS (``--port 0``), with its own throwaway CA.

    ``ca_cert`` signed the server's certificate; ``wrong_ca_cert`` is a second, unrelated
    CA, for clients that must refuse the server.
    """

    def __init__(self, tmp: Path, openssl: str) -> None:
        self.dir = tmp
        self.port = free_port()
        ca = make_ca(openssl, tmp, "ca")
        self.ca_cert = ca[0]
        self.wrong_ca_cert = make_ca(openssl, tmp, "wrong-ca")[0]
        self.server_cert, self.server_key = make_server_cert(openssl, tmp, ca)
        self.log = tmp / "redis-tls.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, exe: str) -> None:
        self.process = subprocess.Popen(
            [
                exe,
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                str(self.server_cert),
                "--tls-key-file",
                str(self.server_key),
                "--tls-ca-cert-file",
                str(self.ca_cert),
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"redis-server with TLS exited at startup:\n{log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the TLS redis-server is not listening on {self.port}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_processes([self.process])
        self.process = None


@pytest.fixture(scope="session")
def redis_tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTLSServer]:
    exe = shutil.which("redis-server")
    openssl = shutil.which("openssl")
    if exe is None:
        pytest.skip("redis-server is not installed: `make test` installs Debian's redis-server")
    if openssl is None:
        pytest.skip("openssl is not installed: the TLS tests need it to make a throwaway CA")
    server = RedisTLSServer(tmp_path_factory.mktemp("redis-tls"), openssl)
    try:
        server.start(exe)
        yield server
    finally:
        server.stop()
