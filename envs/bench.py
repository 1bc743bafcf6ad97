"""Sandbox speed and scale: :func:`bench_sandbox` (``horizonrl-bench sandbox``).

Measured on the ``local`` backend, next to a plain ``subprocess`` baseline in the same run:

* ``tool_call_p50_ms`` / ``tool_call_p99_ms``: a trivial command (``true``) in a warm sandbox
  (baseline: ``subprocess.run(["true"])``);
* ``sandbox_start_p50_ms``: a new sandbox until it has answered its first command (baseline:
  ``Popen(["bash"])`` until it has answered one);
* ``max_concurrent_live``: sandboxes alive at once, each answering a command once all are up
  (baseline: plain ``bash`` processes). It stops early, and says why, when available memory
  falls under ``min_free_mb``, when a sandbox fails to start, or at the file-descriptor limit
  (the soft RLIMIT_NOFILE is raised towards the hard one for the run, then restored).

Targets: p50 <= 1 ms, p99 <= 5 ms, >= 512 live.
"""

from __future__ import annotations

import math
import resource
import subprocess
import time
from typing import Any, Callable

from envs.sandbox import LocalSandbox, SandboxError, SandboxLimits

TARGETS = {"tool_call_p50_ms": 1.0, "tool_call_p99_ms": 5.0, "max_concurrent_live": 512}
FDS_PER_SANDBOX = 8          # pipes and pidfd held by the host per live sandbox, with room to spare


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile `q` (0-100) of `values`."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _timed(action: Callable[[], object], count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def available_memory_mb() -> float:
    """MemAvailable of /proc/meminfo, in MiB."""
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


class _BashProcess:
    """The baseline's live unit: a plain bash answering on a pipe."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0)

    def answer(self) -> bool:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"echo ok\n")
        return self.proc.stdout.readline() == b"ok\n"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def _max_live(make: Callable[[], Any], answer: Callable[[Any], bool], close: Callable[[Any], None],
              target: int, min_free_mb: float) -> tuple[int, str]:
    """Start up to `target` units, then check that every one answers; (count, why it stopped)."""
    units: list[Any] = []
    why = "reached the target"
    try:
        while len(units) < target:
            if available_memory_mb() < min_free_mb:
                why = f"available memory fell under {min_free_mb:g} MiB"
                break
            try:
                unit = make()
            except (OSError, SandboxError) as exc:
                why = f"could not start another: {type(exc).__name__}: {exc}"[:300]
                break
            units.append(unit)
            if not answer(unit):
                why = "a new one did not answer"
                break
        alive = sum(1 for unit in units if answer(unit))
    finally:
        for unit in units:
            close(unit)
    return alive, why


def bench_sandbox(calls: int = 2000, starts: int = 30, max_live: int = 512, min_free_mb: float = 2048,
                  baseline_calls: int = 500) -> dict[str, Any]:
    """Measure the local backend against a subprocess baseline; see the module docstring."""
    limits = SandboxLimits()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_live * FDS_PER_SANDBOX + 256
    if hard == resource.RLIM_INFINITY or hard >= wanted:
        raised = max(soft, wanted)
    else:
        raised = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    try:
        with LocalSandbox({}, limits) as sandbox:
            _timed(lambda: sandbox.exec("true"), 20)                               # warm-up
            call_times = _timed(lambda: sandbox.exec("true"), calls)

        def start_one() -> None:
            with LocalSandbox({}, limits) as fresh:
                fresh.exec("true")
        start_times = _timed(start_one, starts)
        live, live_why = _max_live(lambda: LocalSandbox({}, limits), lambda s: s.exec("echo ok").stdout == "ok\n",
                                   lambda s: s.close(), max_live, min_free_mb)

        base_calls = _timed(lambda: subprocess.run(["true"]), baseline_calls)

        def start_bash() -> None:
            unit = _BashProcess()
            unit.answer()
            unit.close()
        base_starts = _timed(start_bash, starts)
        base_live, base_why = _max_live(_BashProcess, _BashProcess.answer, _BashProcess.close, max_live, min_free_mb)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    result: dict[str, Any] = {
        "tool_call_p50_ms": _ms(percentile(call_times, 50)),
        "tool_call_p99_ms": _ms(percentile(call_times, 99)),
        "sandbox_start_p50_ms": _ms(percentile(start_times, 50)),
        "max_concurrent_live": live,
        "max_concurrent_live_stopped": live_why,
        "subprocess_baseline": {
            "tool_call_p50_ms": _ms(percentile(base_calls, 50)),
            "tool_call_p99_ms": _ms(percentile(base_calls, 99)),
            "sandbox_start_p50_ms": _ms(percentile(base_starts, 50)),
            "max_concurrent_live": base_live,
            "max_concurrent_live_stopped": base_why,
        },
        "calls": calls, "starts": starts, "live_target": max_live, "nofile_limit_used": raised,
        "targets": dict(TARGETS),
    }
    result["meets_targets"] = (result["tool_call_p50_ms"] <= TARGETS["tool_call_p50_ms"]
                               and result["tool_call_p99_ms"] <= TARGETS["tool_call_p99_ms"]
                               and live >= TARGETS["max_concurrent_live"])
    return result
