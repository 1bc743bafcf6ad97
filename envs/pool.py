"""A pool of warm sandboxes: started ahead of need, recycled safely between episodes.

:class:`SandboxPool` hands out :class:`PooledSandbox` objects (the :class:`~envs.sandbox.Sandbox`
interface) from :meth:`SandboxPool.acquire`, whose signature is a
:data:`~envs.sandbox.SandboxFactory`, so ``CodingEnv(task, limits=pool.limits,
factory=pool.acquire)`` takes its agent and grading sandboxes from the pool.

Invariants:

* at most ``PoolConfig.max_live`` sandboxes exist at once (handed out + warm + being recycled);
  :meth:`SandboxPool.acquire` waits for one up to ``acquire_timeout_s``, then raises
  :class:`~envs.sandbox.SandboxError`;
* a warm sandbox has a started shell and an empty work dir; acquiring it writes the task's files
  (host side, no process start), so the agent's work dir holds exactly the task snapshot;
* closing a :class:`PooledSandbox` kills every process of it at once (synchronously: nothing of
  the episode runs after ``close`` returns); a background thread then empties its work dir and
  starts a *fresh* shell (new namespaces or a new container: no process, ``/tmp`` file or shell
  state survives from one episode to the next) and it becomes warm again. After ``max_uses``
  episodes, or if recycling fails, a sandbox is closed instead;
* the warmer thread keeps up to ``PoolConfig.warm`` sandboxes warm; :meth:`SandboxPool.close`
  stops it and closes every sandbox of the pool, handed out or not (call it once the episodes
  are over). The pool is thread-safe; each PooledSandbox is used by one episode at a time.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from envs.sandbox import BACKENDS, ExecResult, RecyclableSandbox, SandboxError, SandboxLimits, make_sandbox

if TYPE_CHECKING:
    from envs.docker_sandbox import DockerConfig


@dataclass(frozen=True)
class PoolConfig:
    """How many sandboxes a pool keeps and hands out; all share one backend and `limits`."""

    backend: str = "local"
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    warm: int = 4                     # started, empty sandboxes kept ready
    max_live: int = 64                # sandboxes alive at once (handed out + warm + recycling)
    max_uses: int = 100               # episodes one sandbox serves before it is closed
    acquire_timeout_s: float = 60.0   # how long acquire waits for a free slot
    docker: DockerConfig | None = None   # the docker backend's settings (None: its defaults)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"PoolConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.max_live < 1 or self.max_uses < 1:
            raise ValueError(f"PoolConfig.max_live and .max_uses must be >= 1, got {self.max_live}, {self.max_uses}")
        if not 0 <= self.warm <= self.max_live:
            raise ValueError(f"PoolConfig.warm must be in 0..max_live ({self.max_live}), got {self.warm}")
        if not self.acquire_timeout_s > 0:
            raise ValueError(f"PoolConfig.acquire_timeout_s must be positive, got {self.acquire_timeout_s}")


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's counters."""

    live: int            # sandboxes alive (handed out + warm + recycling)
    warm: int            # ready to hand out
    in_use: int          # handed out
    created: int         # sandboxes made since the pool started
    recycled: int        # episodes whose sandbox was made warm again
    discarded: int       # sandboxes closed after max_uses or a failed recycle


@dataclass(eq=False)
class _Slot:
    sandbox: RecyclableSandbox
    uses: int = 0


class PooledSandbox:
    """A sandbox on loan from a pool: the Sandbox interface; :meth:`close` gives it back."""

    def __init__(self, pool: SandboxPool, slot: _Slot) -> None:
        self._pool, self._slot = pool, slot
        self._sandbox: RecyclableSandbox | None = slot.sandbox
        self.workdir: Path = slot.sandbox.workdir

    def __enter__(self) -> PooledSandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _inner(self) -> RecyclableSandbox:
        if self._sandbox is None:
            raise SandboxError("this sandbox was given back to its pool")
        return self._sandbox

    def exec(self, command: str, timeout: float | None = None) -> ExecResult:
        return self._inner().exec(command, timeout)

    def read_file(self, path: str) -> str:
        return self._inner().read_file(path)

    def write_file(self, path: str, content: str) -> None:
        self._inner().write_file(path, content)

    def stop(self) -> None:
        self._inner().stop()

    def close(self) -> None:
        """Kill every process of the episode and give the sandbox back. Idempotent."""
        if self._sandbox is not None:
            self._sandbox = None
            self._pool._release(self._slot)


class SandboxPool:
    """Warm, recyclable sandboxes; see the module docstring."""

    def __init__(self, config: PoolConfig = PoolConfig(),
                 factory: Callable[[Mapping[str, str], SandboxLimits], RecyclableSandbox] | None = None) -> None:
        """`factory` makes a new sandbox (default: ``make_sandbox(config.backend, ...)``)."""
        self.config = config
        self._make = factory if factory is not None else partial(make_sandbox, config.backend, docker=config.docker)
        self._cond = threading.Condition()
        self._warm: deque[_Slot] = deque()
        self._dirty: deque[_Slot] = deque()
        self._slots: set[_Slot] = set()            # every live sandbox (warm, dirty, handed out, being made)
        self._in_use = 0
        self._reserved = 0                          # slots counted in max_live but still being created
        self._created = self._recycled = self._discarded = 0
        self._closed = False
        self._warmer = threading.Thread(target=self._warm_loop, name="sandbox-pool-warmer", daemon=True)
        self._warmer.start()

    @property
    def limits(self) -> SandboxLimits:
        return self.config.limits

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stats(self) -> PoolStats:
        with self._cond:
            return PoolStats(live=len(self._slots) + self._reserved, warm=len(self._warm), in_use=self._in_use,
                             created=self._created, recycled=self._recycled, discarded=self._discarded)

    def wait_warm(self, timeout_s: float) -> bool:
        """Wait until `config.warm` sandboxes are warm (or the pool is full); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._warm) < self._warm_target():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._cond.wait(remaining)
            return True

    def acquire(self, files: Mapping[str, str], limits: SandboxLimits | None = None) -> PooledSandbox:
        """A sandbox whose work dir holds exactly `files` (a SandboxFactory); `limits`, if given,
        must be the pool's. Waits up to `acquire_timeout_s` when `max_live` are alive."""
        if limits is not None and limits != self.config.limits:
            raise ValueError(f"this pool's sandboxes have limits {self.config.limits}, not {limits}")
        deadline = time.monotonic() + self.config.acquire_timeout_s
        slot: _Slot | None = None
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxError("the sandbox pool is closed")
                if self._warm:
                    slot = self._warm.popleft()
                    break
                if self._live() < self.config.max_live:
                    self._reserved += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SandboxError(
                        f"no sandbox became free within {self.config.acquire_timeout_s:g} s: all "
                        f"{self.config.max_live} are in use (PoolConfig.max_live); close finished episodes' "
                        "environments or raise max_live")
                self._cond.wait(remaining)
            self._in_use += 1
            self._cond.notify_all()                 # the warmer may refill
        try:
            if slot is None:
                slot = self._new_slot(files)
            else:
                for path, text in files.items():
                    slot.sandbox.write_file(path, text)
        except BaseException:
            with self._cond:
                self._in_use -= 1
                if slot is not None:
                    self._slots.discard(slot)
                self._cond.notify_all()
            if slot is not None:
                slot.sandbox.close()
            raise
        slot.uses += 1
        return PooledSandbox(self, slot)

    def close(self) -> None:
        """Stop the warmer and close every sandbox of the pool. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._warmer.join()
        with self._cond:
            slots, self._slots = list(self._slots), set()
            self._warm.clear()
            self._dirty.clear()
        errors = []
        for slot in slots:
            try:
                slot.sandbox.close()
            except Exception as exc:  # noqa: BLE001 - close the others, then report
                errors.append(exc)
        if errors:
            raise SandboxError(f"{len(errors)} sandbox(es) of the pool failed to close: {errors[0]}")

    # ---- internals --------------------------------------------------------------------------

    def _live(self) -> int:
        return len(self._slots) + self._reserved

    def _warm_target(self) -> int:
        return min(self.config.warm, self.config.max_live - self._in_use)

    def _new_slot(self, files: Mapping[str, str]) -> _Slot:
        """Make and start a sandbox for a reserved place (the reservation is consumed either way)."""
        try:
            sandbox = self._make(files, self.config.limits)
        except BaseException:
            with self._cond:
                self._reserved -= 1
                self._cond.notify_all()
            raise
        slot = _Slot(sandbox)
        with self._cond:
            self._reserved -= 1
            self._slots.add(slot)
            self._created += 1
            closed = self._closed
        try:
            if closed:
                raise SandboxError("the sandbox pool is closed")
            sandbox.start()
        except BaseException:
            with self._cond:
                self._slots.discard(slot)
                self._cond.notify_all()
            sandbox.close()
            raise
        return slot

    def _release(self, slot: _Slot) -> None:
        """A PooledSandbox was closed: kill its processes now, recycle it in the background."""
        try:
            slot.sandbox.stop()
            failed = False
        except Exception:  # noqa: BLE001 - a sandbox that cannot be stopped is discarded
            failed = True
        with self._cond:
            self._in_use -= 1
            if self._closed or slot not in self._slots:
                discard = True
            elif failed or slot.uses >= self.config.max_uses:
                self._slots.discard(slot)
                self._discarded += 1
                discard = True
            else:
                self._dirty.append(slot)
                discard = False
            self._cond.notify_all()
        if discard:
            slot.sandbox.close()

    def _warm_loop(self) -> None:
        """Recycle given-back sandboxes first, then top up the warm ones."""
        while True:
            with self._cond:
                while not self._closed and not self._dirty and not (
                        len(self._warm) < self._warm_target() and self._live() < self.config.max_live):
                    self._cond.wait()
                if self._closed:
                    return
                if self._dirty:
                    slot, fresh = self._dirty.popleft(), False
                else:
                    slot, fresh = None, True
                    self._reserved += 1
            if fresh:
                try:
                    slot = self._new_slot({})
                except Exception:  # noqa: BLE001 - a sandbox that cannot start: retry later, don't spin
                    with self._cond:
                        self._cond.wait(1.0)
                    continue
            else:
                assert slot is not None
                try:
                    slot.sandbox.reset({})
                    slot.sandbox.start()
                except Exception:  # noqa: BLE001 - a sandbox that cannot be recycled is discarded
                    with self._cond:
                        self._slots.discard(slot)
                        self._discarded += 1
                        self._cond.notify_all()
                    slot.sandbox.close()
                    continue
            with self._cond:
                if slot in self._slots:
                    self._warm.append(slot)
                    if not fresh:
                        self._recycled += 1
                self._cond.notify_all()
