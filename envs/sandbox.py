"""Sandboxes: where an agent's commands run, isolated from the host and from each other.

The interface is :class:`Sandbox`; :func:`make_sandbox` builds one for a backend name.
The ``local`` backend, :class:`LocalSandbox`, uses bubblewrap (Linux namespaces):

* each sandbox owns a private host temp dir, mounted read-write at ``/work`` (the agent's
  repository); everything else is read-only system dirs (``/usr`` and the ``/bin``, ``/lib*``
  links, a few ``/etc`` files), a fresh ``/proc`` and ``/dev``, and a size-capped tmpfs ``/tmp``;
* every namespace is unshared (no network at all, own PIDs, own user namespace, and no
  nested user namespaces), the environment is cleared (only ``PATH``, ``HOME`` and ``LANG``
  are set), the sandbox is its own session and dies with its parent;
* the sandbox never runs as host root: when the framework runs as root it runs as ``nobody``
  (RLIMIT_NPROC does not bind host root). Limits are set with ``ulimit`` by the sandbox's
  shell, *inside* its user namespace, so the process limit counts this sandbox's processes
  only, not every process of the host user;
* one persistent ``bash`` per sandbox serves every :meth:`LocalSandbox.exec` (no process
  start per call). Each command runs in a subshell with stdin from ``/dev/null``; its end is
  framed on stdout and stderr by a fresh random token, followed by its exit code. A command
  that overruns its wall-clock limit is killed together with everything in the sandbox and the
  next call starts a fresh shell; the files in ``/work`` are kept. Killing is synchronous: the
  sandbox's PID 1 is killed through a pidfd (its host PID comes from bwrap's ``--info-fd``), and
  PID 1 of a namespace exits only after every other process in it is gone, so when
  :meth:`LocalSandbox.stop` returns nothing of the sandbox runs any more.

Host-side file access (:meth:`LocalSandbox.read_file`, :meth:`LocalSandbox.write_file`) does
not start a process: paths are resolved as the sandbox sees them (``/work/x`` or ``x``,
symlinks followed inside ``/work``, ``..`` refused), then opened component by component with
``O_NOFOLLOW``, so a path can never lead outside the work dir, even if a background process in
the sandbox swaps files for symlinks meanwhile.

A sandbox is used by one episode at a time (it is not thread-safe).
"""

from __future__ import annotations

import json
import os
import re
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
from typing import Mapping, Protocol

WORKDIR = PurePosixPath("/work")             # where the agent's work dir appears inside the sandbox
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
NOBODY = (65534, 65534)                       # (uid, gid) a root host runs sandboxes as
START_TIMEOUT_S = 30.0                        # how long a fresh sandbox may take to answer
STOP_TIMEOUT_S = 10.0                         # how long killing a sandbox's processes may take
_MAX_SYMLINK_HOPS = 40
_MARKER_HOLD = 80                             # bytes held back while looking for an end marker
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
    memory_mb: int = 1024             # address space per process (RLIMIT_AS)
    max_processes: int = 64           # processes in this sandbox (RLIMIT_NPROC, per user namespace)
    file_size_mb: int = 16            # largest file a process may write (RLIMIT_FSIZE); also read/write_file
    max_output_bytes: int = 64_000    # per stream of a command; the rest is dropped, `truncated` set
    tmp_size_mb: int = 64             # size of the private tmpfs at /tmp

    def __post_init__(self) -> None:
        for name in ("timeout_s", "cpu_s", "memory_mb", "max_processes", "file_size_mb",
                     "max_output_bytes", "tmp_size_mb"):
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


def make_sandbox(backend: str, files: Mapping[str, str], limits: SandboxLimits) -> Sandbox:
    """A sandbox of the named backend whose work dir holds `files` (relative path -> text)."""
    if backend == "local":
        return LocalSandbox(files, limits)
    if backend == "docker":
        raise NotImplementedError("the 'docker' sandbox backend is not implemented yet; use backend='local'")
    raise ValueError(f"unknown sandbox backend {backend!r}; available backends: 'local'")


def bwrap_argv(bwrap: str, workdir: Path, limits: SandboxLimits, info_fd: int) -> list[str]:
    """The bubblewrap command line of a sandbox whose shell is ``bash`` in ``/work``; bwrap writes
    the host PID of the sandbox's PID 1 to `info_fd`."""
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
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(limits.tmp_size_mb * 2**20), "--tmpfs", "/tmp",
             "--bind", str(workdir), str(WORKDIR), "--chdir", str(WORKDIR),
             "--remount-ro", "/", "--remount-ro", "/dev",
             "--", "/bin/bash", "--noprofile", "--norc"]
    return argv


def _shell_prelude(limits: SandboxLimits) -> str:
    """Limits the sandbox's shell sets on itself (bash units: KiB for -v and -f)."""
    return (f"ulimit -c 0 && ulimit -u {limits.max_processes} && ulimit -v {limits.memory_mb * 1024}"
            f" && ulimit -f {limits.file_size_mb * 1024} && ulimit -n 1024 || exit 97\n")


class _Capture:
    """One output stream of a command: keeps its first `limit` bytes and finds its end marker."""

    def __init__(self, marker: re.Pattern[bytes], limit: int) -> None:
        self.marker, self.limit = marker, limit
        self.kept = bytearray()
        self.dropped = 0
        self.pending = b""                      # tail held back: it may be the start of the marker
        self.match: re.Match[bytes] | None = None

    def feed(self, chunk: bytes) -> None:
        data = self.pending + chunk
        self.match = self.marker.search(data)
        if self.match is not None:
            self._keep(data[:self.match.start()])
            self.pending = b""
        else:
            self._keep(data[:-_MARKER_HOLD])
            self.pending = data[-_MARKER_HOLD:]

    def finish(self) -> None:
        """No marker will come (timeout, dead shell): keep what is held back."""
        self._keep(self.pending)
        self.pending = b""

    def _keep(self, data: bytes) -> None:
        room = max(0, self.limit - len(self.kept))
        self.kept += data[:room]
        self.dropped += max(0, len(data) - room)

    def text(self) -> str:
        text = bytes(self.kept).decode("utf-8", errors="backslashreplace")
        if self.dropped:
            text += f"\n...[output truncated: {self.dropped} more bytes]"
        return text


class LocalSandbox:
    """A bubblewrap sandbox with a persistent shell; see the module docstring."""

    def __init__(self, files: Mapping[str, str], limits: SandboxLimits, *,
                 run_as: tuple[int, int] | None = None, bwrap: str = "bwrap", tmp_root: Path | None = None) -> None:
        """`run_as` is the host (uid, gid) of the sandbox: by default the current user, or
        ``nobody`` when the current user is root (never root). `tmp_root` is where the work dir is
        created (default: the system temp dir; it must be reachable by `run_as`)."""
        bwrap_path = shutil.which(bwrap)
        if bwrap_path is None:
            raise SandboxError(f"bubblewrap ({bwrap!r}) was not found on PATH; the 'local' sandbox backend "
                               "needs it: install Debian's bubblewrap package (apt-get install bubblewrap)")
        if run_as is None:
            run_as = NOBODY if os.geteuid() == 0 else (os.getuid(), os.getgid())
        if run_as[0] == 0:
            raise SandboxError("refusing to run a sandbox as root (uid 0): process limits do not bind root")
        self.limits = limits
        self._run_as = run_as
        self._switch_user = os.geteuid() != run_as[0]
        self._bwrap = bwrap_path
        self._shell: _Shell | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="horizonrl-sbx-", dir=tmp_root)).resolve()
        try:
            if self._switch_user:
                os.chown(self.workdir, *run_as)
            for path, text in files.items():
                self.write_file(path, text)
        except BaseException:
            _remove_tree(self.workdir)
            raise

    def __enter__(self) -> LocalSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- commands ---------------------------------------------------------------------------

    def exec(self, command: str, timeout: float | None = None) -> ExecResult:
        """Run `command` with bash in /work; see the module docstring for the framing."""
        if "\x00" in command:
            raise ValueError("the command contains a NUL byte")
        timeout = self.limits.timeout_s if timeout is None else timeout
        proc = self._running_shell()
        token = secrets.token_hex(16)
        script = (f"( ulimit -t {self.limits.cpu_s}; eval {shlex.quote(command)} ) </dev/null; "
                  f"printf '\\n{token}:%d\\n' \"$?\"; printf '\\n{token}\\n' >&2\n")
        out = _Capture(re.compile(rb"\n" + token.encode() + rb":(\d+)\n"), self.limits.max_output_bytes)
        err = _Capture(re.compile(rb"\n" + token.encode() + rb"\n"), self.limits.max_output_bytes)
        self._discard_stale_output(proc)
        try:
            assert proc.stdin is not None
            proc.stdin.write(script.encode("utf-8", errors="surrogateescape"))
            proc.stdin.flush()
        except BrokenPipeError:
            pass   # the shell is gone; reading below sees end-of-file
        status = self._read_until_done(proc, out, err, time.monotonic() + timeout)
        truncated = bool(out.dropped or err.dropped)
        if status == "done":
            assert out.match is not None
            return ExecResult(int(out.match.group(1)), out.text(), err.text(), truncated=truncated, timed_out=False)
        out.finish()
        err.finish()
        if status == "timeout":
            self.stop()
            note = (f"\n[timed out after {timeout:g} s: the command and every process in the sandbox were "
                    "killed; files are kept]")
            return ExecResult(124, out.text(), err.text() + note, truncated=truncated, timed_out=True)
        self.stop()
        note = f"\n[the sandbox shell exited (code {proc.returncode}); a fresh one starts with the next command]"
        return ExecResult(-1, out.text(), err.text() + note, truncated=truncated, timed_out=False)

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
        if self.workdir.exists():
            _remove_tree(self.workdir)

    def _running_shell(self) -> subprocess.Popen[bytes]:
        """The running shell, started (and checked) if there is none."""
        if self._shell is not None and self._shell.proc.poll() is None:
            return self._shell.proc
        self.stop()
        user = dict(user=self._run_as[0], group=self._run_as[1], extra_groups=[]) if self._switch_user else {}
        info_read, info_write = os.pipe()
        argv = bwrap_argv(self._bwrap, self.workdir, self.limits, info_write)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    cwd="/", env={"PATH": "/usr/bin:/bin"}, start_new_session=True,
                                    pass_fds=(info_write,), **user)
        except BaseException:
            os.close(info_read)
            raise
        finally:
            os.close(info_write)
        self._shell = _Shell(proc, None)
        if self._switch_user:   # so that /dev/stdout etc. (re-opening the pipes) work inside
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                assert stream is not None
                os.fchown(stream.fileno(), *self._run_as)
        token = secrets.token_hex(16)
        ready = _Capture(re.compile(rb"\n" + token.encode() + rb"\n"), 4096)
        errors = _Capture(re.compile(rb"(?!x)x"), 4096)
        assert proc.stdin is not None
        try:
            proc.stdin.write((_shell_prelude(self.limits) + f"printf '\\n{token}\\n'\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + START_TIMEOUT_S
        status = self._read_until_done(proc, ready, errors, deadline, stderr_marker=False)
        try:
            if status == "done":
                self._shell.init_pidfd = os.pidfd_open(_read_child_pid(info_read, deadline))
        except (OSError, ValueError) as exc:
            status = f"did not report its PID 1 ({exc})"
        finally:
            os.close(info_read)
        if status != "done":
            errors.finish()
            self.stop()
            why = {"timeout": "did not answer in time", "eof": "exited"}.get(status, status)
            raise SandboxError(f"the bubblewrap sandbox {why} (command: {shlex.join(argv)}): "
                               f"{errors.text().strip() or 'no error output'}. The 'local' backend needs "
                               "bubblewrap >= 0.8 and unprivileged user namespaces.")
        return proc

    @staticmethod
    def _discard_stale_output(proc: subprocess.Popen[bytes]) -> None:
        """Drop what background processes of earlier commands wrote since (it is not this command's)."""
        assert proc.stdout is not None and proc.stderr is not None
        poller = select.poll()
        for stream in (proc.stdout, proc.stderr):
            poller.register(stream.fileno(), select.POLLIN)
        for _ in range(64):
            events = [fd for fd, event in poller.poll(0) if event & select.POLLIN]
            if not events:
                return
            for fd in events:
                os.read(fd, 65536)

    @staticmethod
    def _read_until_done(proc: subprocess.Popen[bytes], out: _Capture, err: _Capture, deadline: float,
                         stderr_marker: bool = True) -> str:
        """Read stdout/stderr into the captures until both markers ('done'), 'timeout' or 'eof'."""
        assert proc.stdout is not None and proc.stderr is not None
        captures = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        poller = select.poll()
        for fd in captures:
            poller.register(fd, select.POLLIN)
        while True:
            if out.match is not None and (err.match is not None or not stderr_marker):
                return "done"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            for fd, _event in poller.poll(remaining * 1000):
                chunk = os.read(fd, 65536)
                if not chunk:
                    if captures[fd] is out or stderr_marker:
                        return "eof"
                    poller.unregister(fd)
                    continue
                if captures[fd].match is None:
                    captures[fd].feed(chunk)

    # ---- files (host side, no process) -----------------------------------------------------

    def read_file(self, path: str) -> str:
        """The text of a file in /work; undecodable bytes are kept as surrogate escapes."""
        parts = self._resolve(path)
        fd = self._open(path, parts, write=False)
        try:
            size = os.fstat(fd).st_size
            limit = self.limits.file_size_mb * 2**20
            if size > limit:
                raise SandboxPathError(f"{path} is {size} bytes; files over {limit} bytes cannot be read")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(limit + 1)
        finally:
            os.close(fd)
        return data.decode("utf-8", errors="surrogateescape")

    def write_file(self, path: str, content: str) -> None:
        """Create or overwrite a file in /work (parents created); text is written as UTF-8."""
        data = content.encode("utf-8", errors="surrogateescape")
        limit = self.limits.file_size_mb * 2**20
        if len(data) > limit:
            raise SandboxPathError(f"the content for {path} is {len(data)} bytes; the limit is {limit} bytes")
        parts = self._resolve(path)
        fd = self._open(path, parts, write=True)
        try:
            os.ftruncate(fd, 0)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
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
            candidate = self.workdir.joinpath(*done, part)
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
        dir_fd = os.open(self.workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in parts[:-1]:
                if write:
                    try:
                        os.mkdir(part, 0o755, dir_fd=dir_fd)
                        if self._switch_user:
                            os.chown(part, *self._run_as, dir_fd=dir_fd, follow_symlinks=False)
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
        if write and self._switch_user:
            os.fchown(fd, *self._run_as)
        return fd


@dataclass
class _Shell:
    """A running sandbox: bwrap (whose child is the shell) and a pidfd of the sandbox's PID 1."""

    proc: subprocess.Popen[bytes]
    init_pidfd: int | None


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


def _remove_tree(path: Path) -> None:
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
