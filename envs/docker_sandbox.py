"""The ``docker`` sandbox backend: one container per episode on a docker engine of this host.

:class:`DockerSandbox` has the interface of :class:`envs.sandbox.LocalSandbox` (``exec``,
``read_file``, ``write_file``, ``start``, ``reset``, ``stop``, ``close``):

* the container runs the configured image (:class:`DockerConfig`; build one with
  ``horizonrl-env docker-image``, see :func:`build_image`) with ``network_mode=none``, a memory
  limit without swap (``SandboxLimits.memory_mb``), a pids limit (``max_processes``), a CPU quota
  (``DockerConfig.cpus``), every capability dropped, ``no-new-privileges``, a read-only root
  file system, a size-capped tmpfs ``/tmp``, the host's ``nobody`` when the framework runs as
  root (else the current user), and only ``PATH``, ``HOME`` and ``LANG`` in its environment;
* the agent's work dir is a private host temp dir bind-mounted at ``/work`` (so the engine must
  run on this host; a tmpfs of ``SandboxLimits.disk_mb`` where the framework runs as root),
  accessed host-side exactly like the local backend's (:class:`~envs.sandbox.WorkDir`);
* its PID 1 is docker's init with one persistent ``bash`` below it, driven over the attach
  socket with the same framing as the local backend (:func:`~envs.sandbox.command_script`,
  stdout and stderr demultiplexed from docker's 8-byte frame headers); a command that overruns
  its time limit gets the whole container removed (``docker rm -f`` returns once every process
  is dead), and the next command starts a fresh container on the same work dir;
* clean-up: :meth:`DockerSandbox.close` removes the container and the work dir. Containers are
  created with ``auto_remove`` and ``StdinOnce``: if the worker dies, its attach socket closes,
  the shell reads end-of-file and exits, and the engine removes the container. A container that
  outlives a crashed worker (its shell busy in a foreground command) carries the labels
  ``horizonrl.sandbox=<DockerConfig.label>`` and ``horizonrl.owner=<host>:<pid>:<start time>``;
  :func:`cleanup_stale` removes those whose owner process is gone (and their work dirs).

Where no engine answers at ``DockerConfig.base_url`` the constructor raises
:class:`~envs.sandbox.SandboxError` naming the URL and what to do; the same for a missing image.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import struct
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from envs.sandbox import (NOBODY, SANDBOX_PATH, START_TIMEOUT_S, STDERR, STDOUT, WORKDIR, Capture, ExecResult,
                          SandboxError, SandboxLimits, WorkDir, check_command, command_script, framed_result,
                          run_framed, shell_prelude)

DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"
DEFAULT_IMAGE = "horizonrl-sandbox:bookworm"
LABEL = "horizonrl.sandbox"              # value: DockerConfig.label
OWNER_LABEL = "horizonrl.owner"          # value: <hostname>:<pid>:<process start time>
WORKDIR_LABEL = "horizonrl.workdir"      # value: the host path of the bind-mounted work dir
_WORKDIR_PREFIX = "horizonrl-sbx-"
_HEADER = struct.Struct(">BxxxI")        # docker's stream frame: stream type, 3 pad bytes, payload size


@dataclass(frozen=True)
class DockerConfig:
    """Where the engine is and what the containers look like (limits come from SandboxLimits)."""

    image: str = DEFAULT_IMAGE            # needs bash; python3 (and git, pytest) for coding tasks
    base_url: str = DEFAULT_DOCKER_URL    # the engine's API (a unix socket of this host)
    label: str = "default"                # value of the horizonrl.sandbox label; one per worker pool
    cpus: float = 1.0                     # CPU quota of a container
    api_timeout_s: float = 60.0           # timeout of one engine API call

    def __post_init__(self) -> None:
        if not self.image or not self.label or not self.base_url:
            raise ValueError("DockerConfig.image, .label and .base_url must be non-empty")
        if not self.cpus > 0 or not self.api_timeout_s > 0:
            raise ValueError(f"DockerConfig.cpus and .api_timeout_s must be positive, got {self.cpus}, {self.api_timeout_s}")


def connect(config: DockerConfig) -> Any:
    """A ``docker.DockerClient`` for `config.base_url` that answered a ping, or SandboxError."""
    try:
        import docker
    except ImportError:
        raise SandboxError("the 'docker' sandbox backend needs the docker SDK for Python (pip install docker)") from None
    client = None
    try:
        client = docker.DockerClient(base_url=config.base_url, timeout=config.api_timeout_s)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - the SDK raises DockerException, requests and OS errors alike
        if client is not None:
            client.close()
        raise SandboxError(
            f"no docker engine is reachable at {config.base_url} ({type(exc).__name__}: {exc}). Start one on this "
            "host (e.g. `dockerd --iptables=false --bridge=none &` as root, or `systemctl start docker`), set the "
            "docker backend's base_url (DockerConfig.base_url) to a running engine, or use the 'local' backend."
        ) from None
    return client


def _owner_label() -> str:
    """``<hostname>:<pid>:<start time>`` of this process (the start time tells a reused PID apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return "?"


def _owner_alive(owner: str) -> bool:
    """Whether the process an owner label names still runs (on this host)."""
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    return _start_time(int(pid_text)) == started


def cleanup_stale(label: str, config: DockerConfig = DockerConfig(), *, include_live_owners: bool = False) -> list[str]:
    """Remove the containers labelled ``horizonrl.sandbox=<label>`` whose owner process is gone
    (every one of them if `include_live_owners`), and their host work dirs; returns their ids."""
    client = connect(config)
    removed = []
    try:
        for info in client.api.containers(all=True, filters={"label": f"{LABEL}={label}"}):
            labels = info.get("Labels") or {}
            if not include_live_owners and _owner_alive(labels.get(OWNER_LABEL, "")):
                continue
            _remove_container(client, info["Id"])
            removed.append(info["Id"])
            workdir = Path(labels.get(WORKDIR_LABEL, ""))
            if workdir.name.startswith(_WORKDIR_PREFIX) and workdir.is_dir():
                WorkDir(workdir, 0, None).remove()
    finally:
        client.close()
    return removed


def _remove_container(client: Any, container_id: str) -> None:
    """``docker rm -f``: returns once the container's processes are dead (gone already is fine)."""
    import docker

    try:
        client.api.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        if "already in progress" not in str(exc) and "is not running" not in str(exc):
            raise SandboxError(f"could not remove docker container {container_id[:12]}: {exc}") from None
        _wait_gone(client, container_id)


def _wait_gone(client: Any, container_id: str) -> None:
    import docker

    try:
        client.api.wait(container_id, timeout=START_TIMEOUT_S)
    except (docker.errors.NotFound, docker.errors.APIError):
        pass
    except Exception as exc:  # noqa: BLE001 - a read timeout surfaces as a requests error
        raise SandboxError(f"docker container {container_id[:12]} did not stop: {exc}") from None


class _SocketChannel:
    """A container's attach socket: stdin in, docker-framed stdout/stderr out."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock                      # keep the SDK's wrapper alive (it owns the response)
        raw = getattr(sock, "_sock", sock)
        self.fd = raw.fileno()
        os.set_blocking(self.fd, False)
        self.buffer = b""
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)

    def send(self, data: bytes, deadline: float) -> bool:
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[os.write(self.fd, view):]
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    poller = select.poll()
                    poller.register(self.fd, select.POLLOUT)
                    if remaining <= 0 or not poller.poll(remaining * 1000):
                        return False
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def receive(self, timeout_s: float) -> list[tuple[int, bytes]]:
        if not self.poller.poll(timeout_s * 1000):
            return []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        except ConnectionResetError:
            data = b""
        if not data:
            return [(STDOUT, b""), (STDERR, b"")]
        self.buffer += data
        frames = []
        while len(self.buffer) >= _HEADER.size:
            stream, size = _HEADER.unpack_from(self.buffer)
            if len(self.buffer) < _HEADER.size + size:
                break
            payload = self.buffer[_HEADER.size:_HEADER.size + size]
            self.buffer = self.buffer[_HEADER.size + size:]
            if stream in (STDOUT, STDERR) and payload:
                frames.append((stream, payload))
            elif stream == 3 and payload:     # the engine's own error stream
                frames.append((STDERR, payload))
        return frames

    def discard_pending(self) -> None:
        for _ in range(64):
            if not self.receive(0):
                return

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class DockerSandbox:
    """One container per episode with a persistent shell; see the module docstring."""

    def __init__(self, files: Mapping[str, str], limits: SandboxLimits, config: DockerConfig = DockerConfig(), *,
                 run_as: tuple[int, int] | None = None, tmp_root: Path | None = None) -> None:
        """`run_as` is the (uid, gid) of the container's processes: by default the current user,
        or ``nobody`` when the current user is root (never root)."""
        if run_as is None:
            run_as = NOBODY if os.geteuid() == 0 else (os.getuid(), os.getgid())
        if run_as[0] == 0:
            raise SandboxError("refusing to run a sandbox as root (uid 0)")
        self.limits, self.config = limits, config
        self._run_as = run_as
        self._client = connect(config)
        self._container: str | None = None
        self._channel: _SocketChannel | None = None
        try:
            self._check_image()
            owner = run_as if os.geteuid() != run_as[0] else None
            self._files = WorkDir.create(limits.file_size_mb * 2**20, owner, tmp_root, disk_mb=limits.disk_mb)
        except BaseException:
            self._client.close()
            raise
        self.workdir = self._files.path
        try:
            self._files.populate(files)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> DockerSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def disk_capped(self) -> bool:
        """Whether the work dir is a tmpfs of ``limits.disk_mb`` (the framework runs as root)."""
        return self._files.capped

    @property
    def container_id(self) -> str | None:
        """The id of the running container (None before the first command and after stop)."""
        return self._container

    def _check_image(self) -> None:
        import docker

        try:
            self._client.api.inspect_image(self.config.image)
        except docker.errors.ImageNotFound:
            raise SandboxError(
                f"the docker image {self.config.image!r} is not on the engine at {self.config.base_url}; build it "
                f"with `horizonrl-env docker-image --tag {self.config.image}` (debootstrap + docker import, no "
                "registry needed) or set DockerConfig.image to an image with bash and python3") from None

    # ---- commands ---------------------------------------------------------------------------

    def exec(self, command: str, timeout: float | None = None) -> ExecResult:
        """Run `command` with bash in /work inside the container (same framing as the local backend)."""
        check_command(command)
        timeout = self.limits.timeout_s if timeout is None else timeout
        channel = self._running_channel()
        token = secrets.token_hex(16)
        out = Capture(token, self.limits.max_output_bytes, with_code=True)
        err = Capture(token, self.limits.max_output_bytes, with_code=False)
        channel.discard_pending()
        status = run_framed(channel, command_script(command, token, self.limits.cpu_s), out, err,
                            time.monotonic() + timeout)
        if status != "done":
            self.stop()
        return framed_result(status, out, err, timeout, "unknown")

    def start(self) -> None:
        """Start the container now (a warm sandbox); raises SandboxError if it cannot start."""
        self._running_channel()

    def reset(self, files: Mapping[str, str]) -> None:
        """Remove the container, then make the work dir hold exactly `files`."""
        self.stop()
        self._files.clear()
        self._files.populate(files)

    def stop(self) -> None:
        """Remove the container (every process in it dies first); the work dir stays."""
        container, channel = self._container, self._channel
        self._container, self._channel = None, None
        if channel is not None:
            channel.close()
        if container is not None:
            _remove_container(self._client, container)

    def close(self) -> None:
        """Remove the container and the work dir. Idempotent."""
        try:
            self.stop()
        finally:
            self._files.remove()
            self._client.close()

    def _running_channel(self) -> _SocketChannel:
        """The running container's channel, created (and checked) if there is none."""
        if self._channel is not None:
            return self._channel
        import docker

        api = self._client.api
        host_config = api.create_host_config(
            network_mode="none", init=True, auto_remove=True, read_only=True, cap_drop=["ALL"],
            security_opt=["no-new-privileges"], ipc_mode="private",
            mem_limit=f"{self.limits.memory_mb}m", memswap_limit=f"{self.limits.memory_mb}m",
            pids_limit=self.limits.max_processes, nano_cpus=int(self.config.cpus * 1e9),
            tmpfs={"/tmp": f"size={self.limits.tmp_size_mb}m,mode=1777"},
            binds={str(self.workdir): {"bind": str(WORKDIR), "mode": "rw"}},
            ulimits=[docker.types.Ulimit(name="core", soft=0, hard=0)])
        labels = {LABEL: self.config.label, OWNER_LABEL: _owner_label(), WORKDIR_LABEL: str(self.workdir)}
        try:
            container = api.create_container(
                self.config.image, ["/bin/bash", "--noprofile", "--norc"], stdin_open=True, detach=False, tty=False,
                user=f"{self._run_as[0]}:{self._run_as[1]}", working_dir=str(WORKDIR), hostname="sandbox",
                environment={"PATH": SANDBOX_PATH, "HOME": "/tmp", "LANG": "C.UTF-8"}, network_disabled=True,
                labels=labels, host_config=host_config)["Id"]
        except docker.errors.DockerException as exc:
            raise SandboxError(f"could not create a container from {self.config.image!r}: {exc}") from None
        self._container = container
        try:
            self._channel = _SocketChannel(api.attach_socket(
                container, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}))
            api.start(container)
        except docker.errors.DockerException as exc:
            self.stop()
            raise SandboxError(f"could not start a container from {self.config.image!r}: {exc}") from None
        token = secrets.token_hex(16)
        ready = Capture(token, 4096, with_code=False)
        errors = Capture(secrets.token_hex(16), 4096, with_code=False)
        script = (shell_prelude(self.limits, process_limit=False) + f"printf '\\n{token}\\n'\n").encode()
        status = run_framed(self._channel, script, ready, errors, time.monotonic() + START_TIMEOUT_S,
                            wait_for_err=False)
        if status != "done":
            errors.finish()
            self.stop()
            why = {"timeout": "did not answer in time", "eof": "exited"}.get(status, status)
            raise SandboxError(f"the docker sandbox ({self.config.image!r}) {why}: "
                               f"{errors.text().strip() or 'no error output'}")
        return self._channel

    # ---- files (host side, no process) -----------------------------------------------------

    def read_file(self, path: str) -> str:
        """The text of a file in /work; undecodable bytes are kept as surrogate escapes."""
        return self._files.read(path)

    def write_file(self, path: str, content: str) -> None:
        """Create or overwrite a file in /work (parents created); text is written as UTF-8."""
        self._files.write(path, content)


def build_image(rootfs: Path, tag: str, config: DockerConfig = DockerConfig()) -> str:
    """Import a root file system dir (e.g. from ``debootstrap --variant=minbase
    --include=python3,git bookworm DIR``) into the engine as image `tag`, with no registry;
    returns the image id."""
    if not (rootfs / "bin" / "bash").exists() and not (rootfs / "usr" / "bin" / "bash").exists():
        raise SandboxError(f"{rootfs} does not look like a root file system with bash (no bin/bash)")
    repository, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
    client = connect(config)
    try:
        with tempfile.TemporaryDirectory(prefix="horizonrl-image-") as tmp:
            archive = Path(tmp) / "rootfs.tar"
            with tarfile.open(archive, "w") as tar:
                for entry in sorted(os.listdir(rootfs)):
                    tar.add(rootfs / entry, arcname=entry)
            client.api.import_image_from_file(str(archive), repository=repository, tag=version,
                                              changes=['CMD ["/bin/bash"]'])
        return client.api.inspect_image(tag)["Id"]
    finally:
        client.close()
