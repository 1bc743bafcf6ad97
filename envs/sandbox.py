"""Sandboxes: where an agent's commands run, isolated from the host and from each other.

The interface is :class:`Sandbox`; :func:`make_sandbox` builds one for a backend name
(``local`` here, ``docker`` in :mod:`envs.docker_sandbox`). A pool of warm, recyclable
sandboxes is in :mod:`envs.pool`. The ``local`` backend, :class:`LocalSandbox`, uses
bubblewrap (Linux namespaces):

* each sandbox owns a private host temp dir, mounted read-write at ``/work`` (the agent's
  repository); everything else is read-only system dirs (``/usr`` and the ``/bin``, ``/lib*``
  links, a few ``/etc`` files), a fresh ``/proc`` and ``/dev``, and a size-capped tmpfs ``/tmp``;
* where the framework may mount (it runs as root) the work dir is a private tmpfs of
  ``SandboxLimits.disk_mb`` (memory-backed, allocated as used), so many files cannot fill the
  host's disk: writes fail with ENOSPC (:attr:`WorkDir.capped`). Without that privilege only
  the per-file limit applies. A worker killed with SIGKILL leaves its work dirs (and mounts)
  in the temp dir: ``umount -l /tmp/horizonrl-sbx-*; rm -rf /tmp/horizonrl-sbx-*``;
  host paths named as `protected` are masked where they would otherwise be visible (a dir by an
  empty read-only tmpfs, a file by a device node that cannot be opened);
* every namespace is unshared (no network at all, own PIDs, own user namespace, and no
  nested user namespaces), the environment is cleared (only ``PATH``, ``HOME`` and ``LANG``
  are set), the sandbox is its own session and dies with its parent;
* the sandbox never runs as host root: when the framework runs as root it runs as ``nobody``
  (RLIMIT_NPROC does not bind host root). Limits are set with ``ulimit`` by the sandbox's
  shell, *inside* its user namespace, so the process limit counts this sandbox's processes
  only, not every process of the host user;
* one persistent ``bash`` per sandbox serves every :meth:`LocalSandbox.exec` (no process
  start per call). Each command runs in a subshell with stdin from ``/dev/null``; its end is
  framed by a fresh random token, first on stderr, then on stdout followed by its exit code
  (:func:`command_script`; both backends share the framing, see :func:`run_framed`). A command
  that overruns its wall-clock limit is killed together with everything in the sandbox and the
  next call starts a fresh shell; the files in ``/work`` are kept. Killing is synchronous: the
  sandbox's PID 1 is killed through a pidfd (its host PID comes from bwrap's ``--info-fd``), and
  PID 1 of a namespace exits only after every other process in it is gone, so when
  :meth:`LocalSandbox.stop` returns nothing of the sandbox runs any more.
* :meth:`LocalSandbox.reset` kills everything and replaces the work dir's content (the pool
  recycles sandboxes with it); :meth:`LocalSandbox.start` starts the shell ahead of the first
  command (a *warm* sandbox).

Host-side file access (:class:`WorkDir`, behind :meth:`LocalSandbox.read_file` and
:meth:`LocalSandbox.write_file`) does not start a process: paths are resolved as the sandbox
sees them (``/work/x`` or ``x``, symlinks followed inside ``/work``, ``..`` refused), then opened
component by component with ``O_NOFOLLOW``, so a path can never lead outside the work dir, even
if a background process in the sandbox swaps files for symlinks meanwhile.

A sandbox is used by one episode at a time (it is not thread-safe).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import select
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from envs.docker_sandbox import DockerConfig

WORKDIR = PurePosixPath("/work")             # where the agent's work dir appears inside the sandbox
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
NOBODY = (65534, 65534)                       # (uid, gid) a root host runs sandboxes as
START_TIMEOUT_S = 30.0                        # how long a fresh sandbox may take to answer
STOP_TIMEOUT_S = 10.0                         # how long killing a sandbox's processes may take
STDOUT, STDERR = 1, 2                         # stream numbers of a framed channel
BACKENDS: tuple[str, ...] = ("local", "docker")
_MAX_SYMLINK_HOPS = 40
_MARKER_HOLD = 80                             # bytes held back while looking for an end marker
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64")
_ETC_FILES = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
              "/etc/localtime", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf")


class SandboxError(RuntimeError):
    """The sandbox could not be created or broke (an infrastructure failure, not the agent's)."""


class SandboxPathError(ValueError):
    """A file path the agent gave is outside the work dir, missing, not a regular file or too big."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandbox; `timeout_s` and `cpu_s` apply to each command."""

    timeout_s: float = 10.0           # wall clock per command; the sandbox's processes are then killed
    cpu_s: int = 10                   # CPU seconds per process (RLIMIT_CPU)
    memory_mb: int = 1024             # address space per process (RLIMIT_AS); docker: the container's memory
    max_processes: int = 64           # processes in this sandbox (RLIMIT_NPROC per user namespace; docker: pids)
    file_size_mb: int = 16            # largest file a process may write (RLIMIT_FSIZE); also read/write_file
    max_output_bytes: int = 64_000    # per stream of a command; the rest is dropped, `truncated` set
    tmp_size_mb: int = 64             # size of the private tmpfs at /tmp
    disk_mb: int = 1024               # size of the work dir (a private tmpfs where the framework may mount)

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "max_processes", "file_size_mb",
                     "max_output_bytes", "tmp_size_mb", "disk_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxLimits.{name} must be positive, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ExecResult:
    """What one command did. `exit_code` is 124 when `timed_out`, -1 if the sandbox shell died."""

    exit_code: int
    stdout: str
    stderr: str
    truncated: bool
    timed_out: bool


class Sandbox(Protocol):
    """An isolated place to run an agent's commands, with a private work dir."""

    workdir: Path   # host path of the agent's private work dir (``/work`` inside)

    def exec(self, command: str, timeout: float | None = None) -> ExecResult:
        """Run a bash command line in the work dir; `timeout` defaults to the limits' `timeout_s`."""

    def read_file(self, path: str) -> str:
        """The text of a file (path relative to the work dir, or absolute under /work)."""

    def write_file(self, path: str, content: str) -> None:
        """Create or overwrite a file (parent dirs are created)."""

    def stop(self) -> None:
        """Kill every process in the sandbox and wait until they are gone; files stay."""

    def close(self) -> None:
        """Kill everything and delete the work dir. Idempotent."""


class RecyclableSandbox(Sandbox, Protocol):
    """A sandbox that can be started ahead of use and reset for another episode (see envs.pool)."""

    def start(self) -> None:
        """Start the sandbox's shell now (it would start with the first command otherwise)."""

    def reset(self, files: Mapping[str, str]) -> None:
        """Kill every process, then make the work dir hold exactly `files`."""


SandboxFactory = Callable[[Mapping[str, str], SandboxLimits], Sandbox]
"""Makes a sandbox whose work dir holds the given files (``make_sandbox`` with a backend bound,
``SandboxPool.acquire``, ...); :class:`envs.env.CodingEnv` takes one."""


def make_sandbox(backend: str, files: Mapping[str, str], limits: SandboxLimits, *,
                 docker: DockerConfig | None = None) -> RecyclableSandbox:
    """A sandbox of the named backend whose work dir holds `files` (relative path -> text);
    `docker` configures the ``docker`` backend (default: :class:`envs.docker_sandbox.DockerConfig`)."""
    if backend == "local":
        return LocalSandbox(files, limits)
    if backend == "docker":
        from envs.docker_sandbox import DockerConfig, DockerSandbox

        return DockerSandbox(files, limits, docker if docker is not None else DockerConfig())
    raise ValueError(f"unknown sandbox backend {backend!r}; available backends: "
                     + ", ".join(repr(name) for name in BACKENDS))


# ---- the framing shared by the backends's persistent shells ---------------------------------

def shell_prelude(limits: SandboxLimits, *, process_limit: bool = True, memory_limit: bool = True) -> str:
    """Limits a sandbox's shell sets on itself (bash units: KiB for -v and -f). `process_limit`
    (RLIMIT_NPROC) only where the shell has its own user namespace; docker uses cgroups."""
    parts = ["ulimit -c 0"]
    if process_limit:
        parts.append(f"ulimit -u {limits.max_processes}")
    if memory_limit:
        parts.append(f"ulimit -v {limits.memory_mb * 1024}")
    parts += [f"ulimit -f {limits.file_size_mb * 1024}", "ulimit -n 1024"]
    return " && ".join(parts) + " || exit 97\n"


def command_script(command: str, token: str, cpu_s: int) -> bytes:
    """One framed command for a persistent bash: the command in a subshell (stdin /dev/null, its
    own CPU limit), then ``\\n<token>\\n`` on stderr and ``\\n<token>:<exit code>\\n`` on stdout.
    The stderr marker is written first, so it is in its pipe once the stdout marker is seen."""
    return (f"( ulimit -t {cpu_s}; eval {shlex.quote(command)} ) </dev/null; __hz_rc=$?; "
            f"printf '\\n{token}\\n' >&2; printf '\\n{token}:%d\\n' \"$__hz_rc\"\n"
            ).encode("utf-8", errors="surrogateescape")


class Capture:
    """One output stream of a command: keeps its first `limit` bytes and finds its end marker
    (``\\n<token>\\n``, or ``\\n<token>:<code>\\n`` when `with_code`)."""

    def __init__(self, token: str, limit: int, *, with_code: bool) -> None:
        self.marker = b"\n" + token.encode() + (b":" if with_code else b"\n")
        self.limit, self.with_code = limit, with_code
        self.kept = bytearray()
        self.dropped = 0
        self.pending = b""                      # tail held back: it may be the start of the marker
        self.done = False
        self.code: int | None = None

    def feed(self, chunk: bytes) -> None:
        if self.done:
            return                              # later output belongs to background processes
        data = self.pending + chunk if self.pending else chunk
        index = data.find(self.marker)
        if index < 0:
            cut = max(0, len(data) - _MARKER_HOLD)
            self._keep(data[:cut])
            self.pending = data[cut:]
            return
        self._keep(data[:index])
        if self.with_code:
            start = index + len(self.marker)
            end = data.find(b"\n", start)
            if end < 0:
                self.pending = data[index:]     # the exit code is still on its way
                return
            self.code = int(data[start:end])
        self.pending = b""
        self.done = True

    def finish(self) -> None:
        """No marker will come (timeout, dead shell): keep what is held back."""
        self._keep(self.pending)
        self.pending = b""

    def _keep(self, data: bytes) -> None:
        if not data:
            return
        room = max(0, self.limit - len(self.kept))
        self.kept += data[:room]
        self.dropped += max(0, len(data) - room)

    def text(self) -> str:
        text = bytes(self.kept).decode("utf-8", errors="backslashreplace")
        if self.dropped:
            text += f"\n...[output truncated: {self.dropped} more bytes]"
        return text


class Channel(Protocol):
    """The pipes of a persistent shell: bytes in, (stream, bytes) out."""

    def send(self, data: bytes, deadline: float) -> bool:
        """Write all of `data` to the shell's stdin by `deadline`; False if the shell is gone or stuck."""

    def receive(self, timeout_s: float) -> list[tuple[int, bytes]]:
        """What arrived within `timeout_s` as (STDOUT | STDERR, chunk); an empty chunk is end-of-file."""

    def discard_pending(self) -> None:
        """Drop output that is already waiting (background processes of earlier commands)."""


def run_framed(channel: Channel, script: bytes, out: Capture, err: Capture, deadline: float, *,
               wait_for_err: bool = True) -> str:
    """Send `script`, then read until `out` (and `err`, if `wait_for_err`) saw its marker:
    "done", "timeout" or "eof" (the shell went away)."""
    if not channel.send(script, deadline) and time.monotonic() >= deadline:
        return "timeout"
    while True:
        if out.done and (err.done or not wait_for_err):
            return "done"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        for stream, chunk in channel.receive(remaining):
            if not chunk:
                if stream == STDOUT or wait_for_err:
                    return "eof"
                continue
            (out if stream == STDOUT else err).feed(chunk)


def framed_result(status: str, out: Capture, err: Capture, timeout: float, shell_exit: object) -> ExecResult:
    """The ExecResult of a framed command that ended with `status` (see :func:`run_framed`)."""
    truncated = bool(out.dropped or err.dropped)
    if status == "done":
        assert out.code is not None
        return ExecResult(out.code, out.text(), err.text(), truncated=truncated, timed_out=False)
    out.finish()
    err.finish()
    if status == "timeout":
        note = (f"\n[timed out after {timeout:g} s: the command and every process in the sandbox were "
                "killed; files are kept]")
        return ExecResult(124, out.text(), err.text() + note, truncated=truncated, timed_out=True)
    note = f"\n[the sandbox shell exited (code {shell_exit}); a fresh one starts with the next command]"
    return ExecResult(-1, out.text(), err.text() + note, truncated=truncated, timed_out=False)


def check_command(command: str) -> None:
    if "\x00" in command:
        raise ValueError("the command contains a NUL byte")


class _PipeChannel:
    """The stdin/stdout/stderr pipes of a local shell (stdin non-blocking, one poll object)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.stdin = proc.stdin.fileno()
        os.set_blocking(self.stdin, False)
        self.streams = {proc.stdout.fileno(): STDOUT, proc.stderr.fileno(): STDERR}
        self.poller = select.poll()
        for fd in self.streams:
            self.poller.register(fd, select.POLLIN)

    def send(self, data: bytes, deadline: float) -> bool:
        view = memoryview(data)
        try:
            while view:
                try:
                    view = view[os.write(self.stdin, view):]
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not _wait_writable(self.stdin, remaining):
                        return False
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def receive(self, timeout_s: float) -> list[tuple[int, bytes]]:
        chunks = []
        for fd, _event in self.poller.poll(timeout_s * 1000):
            chunk = os.read(fd, 65536)
            if not chunk:
                self.poller.unregister(fd)
            chunks.append((self.streams[fd], chunk))
        return chunks

    def discard_pending(self) -> None:
        for _ in range(64):
            ready = [fd for fd, event in self.poller.poll(0) if event & select.POLLIN]
            if not ready:
                return
            for fd in ready:
                os.read(fd, 65536)


def _wait_writable(fd: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(timeout_s * 1000))


# ---- the host side of the work dir ----------------------------------------------------------

_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount_tmpfs(path: Path, size_mb: int, owner: tuple[int, int]) -> bool:
    """Mount a private tmpfs of `size_mb` (nosuid, nodev) on `path`, owned by `owner`; False
    where this process may not mount (it is not root)."""
    if os.geteuid() != 0:
        return False
    options = f"size={size_mb}m,nr_inodes={max(16384, size_mb * 64)},mode=0700,uid={owner[0]},gid={owner[1]}"
    if _libc().mount(b"tmpfs", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV, options.encode()) != 0:
        code = ctypes.get_errno()
        if code in (errno.EPERM, errno.EACCES):
            return False
        raise SandboxError(f"could not mount a tmpfs on {path}: {os.strerror(code)}")
    return True


class WorkDir:
    """A sandbox's work dir seen from the host: safe file access (no symlink leads out), reset.

    `owner` is the host (uid, gid) that files and dirs are given to (None: leave them to the
    current user). `capped`: the dir is a private tmpfs of a fixed size (see :meth:`create`)."""

    def __init__(self, path: Path, max_file_bytes: int, owner: tuple[int, int] | None, capped: bool = False) -> None:
        self.path, self.max_file_bytes, self.owner, self.capped = path, max_file_bytes, owner, capped

    @classmethod
    def create(cls, max_file_bytes: int, owner: tuple[int, int] | None, tmp_root: Path | None = None,
               disk_mb: int | None = None) -> WorkDir:
        """A new empty work dir in `tmp_root` (default: the system temp dir); with `disk_mb`, a
        tmpfs of that size is mounted on it where this process may mount (it runs as root)."""
        path = Path(tempfile.mkdtemp(prefix="horizonrl-sbx-", dir=tmp_root)).resolve()
        try:
            capped = disk_mb is not None and mount_tmpfs(path, disk_mb, owner or (os.getuid(), os.getgid()))
            if owner is not None and not capped:
                os.chown(path, *owner)
        except BaseException:
            os.rmdir(path)
            raise
        return cls(path, max_file_bytes, owner, capped)

    def populate(self, files: Mapping[str, str]) -> None:
        for path, text in files.items():
            self.write(path, text)

    def clear(self) -> None:
        """Delete everything inside the work dir (the dir itself stays; nothing may run in it)."""
        with os.scandir(self.path) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    remove_tree(Path(entry.path))
                else:
                    os.unlink(entry.path)

    def remove(self) -> None:
        """Delete the work dir (unmounting its tmpfs first). Idempotent."""
        if os.path.ismount(self.path):
            if _libc().umount2(os.fsencode(self.path), _MNT_DETACH) != 0:
                raise SandboxError(f"could not unmount {self.path}: {os.strerror(ctypes.get_errno())}")
        if self.path.exists():
            remove_tree(self.path)

    def read(self, path: str) -> str:
        """The text of a file; undecodable bytes are kept as surrogate escapes."""
        parts = self._resolve(path)
        fd = self._open(path, parts, write=False)
        try:
            size = os.fstat(fd).st_size
            if size > self.max_file_bytes:
                raise SandboxPathError(f"{path} is {size} bytes; files over {self.max_file_bytes} bytes cannot be read")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(self.max_file_bytes + 1)
        finally:
            os.close(fd)
        return data.decode("utf-8", errors="surrogateescape")

    def write(self, path: str, content: str) -> None:
        """Create or overwrite a file (parents created); text is written as UTF-8."""
        data = content.encode("utf-8", errors="surrogateescape")
        if len(data) > self.max_file_bytes:
            raise SandboxPathError(f"the content for {path} is {len(data)} bytes; the limit is {self.max_file_bytes} bytes")
        parts = self._resolve(path)
        fd = self._open(path, parts, write=True)
        try:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:          # ENOSPC: the work dir is full (its tmpfs cap)
            raise SandboxPathError(f"cannot write {path}: {exc.strerror}") from None
        finally:
            os.close(fd)

    def _resolve(self, path: str) -> list[str]:
        """The components of `path` relative to the work dir, with symlinks resolved as inside."""
        if not isinstance(path, str) or not path.strip():
            raise SandboxPathError("the path is empty")
        if "\x00" in path:
            raise SandboxPathError(f"the path {path!r} contains a NUL byte")
        pure = PurePosixPath(path)
        if pure.is_absolute():
            if not pure.is_relative_to(WORKDIR):
                raise SandboxPathError(f"{path} is outside {WORKDIR}; only files under {WORKDIR} can be accessed")
            pure = pure.relative_to(WORKDIR)
        if ".." in pure.parts:
            raise SandboxPathError(f"{path}: '..' is not allowed in paths")
        todo, done, hops = list(pure.parts), [], 0
        while todo:
            part = todo.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not done:
                    raise SandboxPathError(f"{path} leads outside {WORKDIR} through a symbolic link")
                done.pop()
                continue
            candidate = self.path.joinpath(*done, part)
            if not candidate.is_symlink():
                done.append(part)
                continue
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise SandboxPathError(f"{path}: too many levels of symbolic links")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                if not target.is_relative_to(WORKDIR):
                    raise SandboxPathError(f"{path} is a symbolic link to {target}, outside {WORKDIR}")
                target, done = target.relative_to(WORKDIR), []
            todo = list(target.parts) + todo
        if not done:
            raise SandboxPathError(f"{path} is the work dir itself, not a file")
        return done

    def _open(self, path: str, parts: list[str], *, write: bool) -> int:
        """Open workdir/parts without following any symlink; a regular file or SandboxPathError."""
        dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                if write:
                    try:
                        os.mkdir(part, 0o755, dir_fd=dir_fd)
                        if self.owner is not None:
                            os.chown(part, *self.owner, dir_fd=dir_fd, follow_symlinks=False)
                    except FileExistsError:
                        pass
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                os.close(dir_fd)
                dir_fd = next_fd
            mode = (os.O_WRONLY | os.O_CREAT) if write else os.O_RDONLY
            fd = os.open(parts[-1], mode | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        except FileNotFoundError:
            raise SandboxPathError(f"file not found: {path}") from None
        except NotADirectoryError:
            raise SandboxPathError(f"{path}: a parent of the file is not a directory") from None
        except IsADirectoryError:
            raise SandboxPathError(f"{path} is a directory, not a file") from None
        except OSError as exc:
            raise SandboxPathError(f"cannot open {path}: {exc.strerror}") from None
        finally:
            os.close(dir_fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise SandboxPathError(f"{path} is {kind}")
        if write and self.owner is not None:
            os.fchown(fd, *self.owner)
        return fd


# ---- the local (bubblewrap) backend ---------------------------------------------------------

def _visible_in_sandbox(path: str) -> bool:
    """Whether a host path is mounted into a local sandbox (see :func:`bwrap_argv`)."""
    pure = PurePosixPath(path)
    return any(pure == PurePosixPath(root) or pure.is_relative_to(root) for root in _SYSTEM_DIRS + _ETC_FILES)


def protected_mounts(protected: Iterable[str | Path]) -> list[str]:
    """bwrap arguments that mask the host paths `protected` where a sandbox would see them: a
    dir becomes an empty read-only tmpfs, anything else ``/dev/null`` on a ``nodev`` mount (it
    cannot be opened)."""
    argv: list[str] = []
    seen: set[str] = set()
    for raw in protected:
        path = os.path.abspath(raw)
        for candidate in (path, os.path.realpath(path)):
            if candidate in seen or not _visible_in_sandbox(candidate) or not os.path.lexists(candidate):
                continue
            seen.add(candidate)
            if os.path.isdir(candidate) and not os.path.islink(candidate):
                argv += ["--tmpfs", candidate, "--remount-ro", candidate]
            else:
                argv += ["--ro-bind", "/dev/null", candidate]
    return argv


def bwrap_argv(bwrap: str, workdir: Path, limits: SandboxLimits, info_fd: int,
               protected: Sequence[str | Path] = ()) -> list[str]:
    """The bubblewrap command line of a sandbox whose shell is ``bash`` in ``/work``; bwrap writes
    the host PID of the sandbox's PID 1 to `info_fd`; `protected` host paths are masked."""
    argv = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--info-fd", str(info_fd),
            "--die-with-parent", "--new-session", "--hostname", "sandbox",
            "--clearenv", "--setenv", "PATH", SANDBOX_PATH, "--setenv", "HOME", "/tmp",
            "--setenv", "LANG", "C.UTF-8",
            "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64"):
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), str(host)]
    for path in _ETC_FILES:
        argv += ["--ro-bind-try", path, path]
    argv += protected_mounts(protected)
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(limits.tmp_size_mb * 2**20), "--tmpfs", "/tmp",
             "--bind", str(workdir), str(WORKDIR), "--chdir", str(WORKDIR),
             "--remount-ro", "/", "--remount-ro", "/dev",
             "--", "/bin/bash", "--noprofile", "--norc"]
    return argv


class LocalSandbox:
    """A bubblewrap sandbox with a persistent shell; see the module docstring."""

    def __init__(self, files: Mapping[str, str], limits: SandboxLimits, *,
                 run_as: tuple[int, int] | None = None, bwrap: str = "bwrap", tmp_root: Path | None = None,
                 protected: Sequence[str | Path] = ()) -> None:
        """`run_as` is the host (uid, gid) of the sandbox: by default the current user, or
        ``nobody`` when the current user is root (never root). `tmp_root` is where the work dir is
        created (default: the system temp dir; it must be reachable by `run_as`). `protected` host
        paths are masked inside the sandbox (see :func:`protected_mounts`)."""
        bwrap_path = shutil.which(bwrap)
        if bwrap_path is None:
            raise SandboxError(f"bubblewrap ({bwrap!r}) was not found on PATH; the 'local' sandbox backend "
                               "needs it: install Debian's bubblewrap package (apt-get install bubblewrap)")
        if run_as is None:
            run_as = NOBODY if os.geteuid() == 0 else (os.getuid(), os.getgid())
        if run_as[0] == 0:
            raise SandboxError("refusing to run a sandbox as root (uid 0): process limits do not bind root")
        self.limits = limits
        self.protected = tuple(str(path) for path in protected)
        self._run_as = run_as
        self._switch_user = os.geteuid() != run_as[0]
        self._bwrap = bwrap_path
        self._shell: _Shell | None = None
        self._files = WorkDir.create(limits.file_size_mb * 2**20, run_as if self._switch_user else None, tmp_root,
                                     disk_mb=limits.disk_mb)
        self.workdir = self._files.path
        try:
            self._files.populate(files)
        except BaseException:
            self._files.remove()
            raise

    def __enter__(self) -> LocalSandbox:
        return self

    @property
    def disk_capped(self) -> bool:
        """Whether the work dir is a tmpfs of ``limits.disk_mb`` (the framework runs as root)."""
        return self._files.capped

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- commands ---------------------------------------------------------------------------

    def exec(self, command: str, timeout: float | None = None) -> ExecResult:
        """Run `command` with bash in /work; see the module docstring for the framing."""
        check_command(command)
        timeout = self.limits.timeout_s if timeout is None else timeout
        shell = self._running_shell()
        token = secrets.token_hex(16)
        out = Capture(token, self.limits.max_output_bytes, with_code=True)
        err = Capture(token, self.limits.max_output_bytes, with_code=False)
        shell.channel.discard_pending()
        status = run_framed(shell.channel, command_script(command, token, self.limits.cpu_s), out, err,
                            time.monotonic() + timeout)
        if status != "done":
            self.stop()
        return framed_result(status, out, err, timeout, shell.proc.returncode)

    def start(self) -> None:
        """Start the shell now (a warm sandbox); raises SandboxError if it cannot start."""
        self._running_shell()

    def reset(self, files: Mapping[str, str]) -> None:
        """Kill every process, then make the work dir hold exactly `files` (a fresh /tmp comes
        with the next shell)."""
        self.stop()
        self._files.clear()
        self._files.populate(files)

    def stop(self) -> None:
        """Kill every process in the sandbox and wait until they are all gone (files stay)."""
        shell, self._shell = self._shell, None
        if shell is None:
            return
        if shell.init_pidfd is not None:
            # PID 1 of a namespace exits only once every other process in it has been reaped;
            # bwrap, its parent, then reaps it and exits (so no zombie is left to the host's init).
            try:
                signal.pidfd_send_signal(shell.init_pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            poller = select.poll()
            poller.register(shell.init_pidfd, select.POLLIN)
            poller.poll(STOP_TIMEOUT_S * 1000)
            os.close(shell.init_pidfd)
        try:
            shell.proc.wait(timeout=STOP_TIMEOUT_S if shell.init_pidfd is not None else 0)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(shell.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            shell.proc.wait()
        for stream in (shell.proc.stdin, shell.proc.stdout, shell.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.stop()
        self._files.remove()

    def _running_shell(self) -> _Shell:
        """The running shell, started (and checked) if there is none."""
        if self._shell is not None and self._shell.proc.poll() is None:
            return self._shell
        self.stop()
        user = dict(user=self._run_as[0], group=self._run_as[1], extra_groups=[]) if self._switch_user else {}
        info_read, info_write = os.pipe()
        argv = bwrap_argv(self._bwrap, self.workdir, self.limits, info_write, self.protected)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    bufsize=0, cwd="/", env={"PATH": "/usr/bin:/bin"}, start_new_session=True,
                                    pass_fds=(info_write,), **user)
        except BaseException:
            os.close(info_read)
            raise
        finally:
            os.close(info_write)
        shell = self._shell = _Shell(proc, None, _PipeChannel(proc))
        if self._switch_user:   # so that /dev/stdout etc. (re-opening the pipes) work inside
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                assert stream is not None
                os.fchown(stream.fileno(), *self._run_as)
        token = secrets.token_hex(16)
        ready = Capture(token, 4096, with_code=False)
        errors = Capture(secrets.token_hex(16), 4096, with_code=False)   # all of stderr, no marker
        deadline = time.monotonic() + START_TIMEOUT_S
        script = (shell_prelude(self.limits) + f"printf '\\n{token}\\n'\n").encode()
        status = run_framed(shell.channel, script, ready, errors, deadline, wait_for_err=False)
        try:
            if status == "done":
                shell.init_pidfd = os.pidfd_open(_read_child_pid(info_read, deadline))
        except (OSError, ValueError) as exc:
            status = f"did not report its PID 1 ({exc})"
        finally:
            os.close(info_read)
        if status != "done":
            for stream, chunk in shell.channel.receive(0):
                if stream == STDERR:
                    errors.feed(chunk)
            errors.finish()
            self.stop()
            why = {"timeout": "did not answer in time", "eof": "exited"}.get(status, status)
            raise SandboxError(f"the bubblewrap sandbox {why} (command: {shlex.join(argv)}): "
                               f"{errors.text().strip() or 'no error output'}. The 'local' backend needs "
                               "bubblewrap >= 0.8 and unprivileged user namespaces.")
        return shell

    # ---- files (host side, no process) -----------------------------------------------------

    def read_file(self, path: str) -> str:
        """The text of a file in /work; undecodable bytes are kept as surrogate escapes."""
        return self._files.read(path)

    def write_file(self, path: str, content: str) -> None:
        """Create or overwrite a file in /work (parents created); text is written as UTF-8."""
        self._files.write(path, content)


@dataclass
class _Shell:
    """A running sandbox: bwrap (whose child is the shell), a pidfd of the sandbox's PID 1, its pipes."""

    proc: subprocess.Popen[bytes]
    init_pidfd: int | None
    channel: _PipeChannel


def _read_child_pid(fd: int, deadline: float) -> int:
    """The "child-pid" of bwrap's --info-fd JSON (bwrap writes it, then closes the pipe)."""
    data = b""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise ValueError("timed out reading bwrap's --info-fd")
        chunk = os.read(fd, 4096)
        if not chunk:
            return int(json.loads(data)["child-pid"])
        data += chunk


def remove_tree(path: Path) -> None:
    """Delete a work dir, even where the sandbox removed permissions from its own files."""
    try:
        shutil.rmtree(path)
    except OSError:
        for root, dirs, _files in os.walk(path):
            for name in dirs:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o700)
        os.chmod(path, 0o700)
        shutil.rmtree(path)
