"""``horizonrl-env``: look at task suites, run a task, run one command in a fresh sandbox.

    horizonrl-env list [SUITE] [--split train|heldout|all] [--skip-broken] [--json]
    horizonrl-env run TASK_ID [--suite SUITE] [--calls FILE.jsonl] [--backend local|docker] [--json]
    horizonrl-env exec [--backend local|docker] [--protected PATH ...] [--timeout S] -- CMD ...
    horizonrl-env docker-image [--tag TAG] [--rootfs DIR] [--packages LIST] [--mirror URL]
    horizonrl-env docker-cleanup [--label LABEL] [--all]

SUITE is ``builtin`` (default) or a path: a ``.jsonl`` task file (native or SWE-bench style),
a Terminal-Bench style task dir, or a dir of them (see :mod:`envs.loaders`).

``run`` plays the task's reference solution (or the tool calls of ``--calls``, one
``{"name": ..., "arguments": {...}}`` per line), prints every call and its observation, then
grades the work dir; exit code 0 if the grade passed, 1 if not. ``exec`` prints one JSON line
``{"exit_code", "stdout", "stderr", "timed_out"}``; a single CMD argument is a bash command line,
several are quoted and joined. Exit code 2: the task, suite or sandbox could not be used.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from envs.docker_sandbox import DEFAULT_DOCKER_URL, DEFAULT_IMAGE, DockerConfig, build_image, cleanup_stale
from envs.env import CodingEnv
from envs.leak import leaky_suite
from envs.loaders import LoadedTasks, load_tasks
from envs.sandbox import BACKENDS, LocalSandbox, SandboxError, SandboxLimits, make_sandbox
from envs.solver import scripted_solution
from envs.suite import builtin_suite
from envs.tasks import SPLITS, TaskError
from envs.tools import ToolCall

DEFAULT_PACKAGES = "python3,git,python3-pytest"


def _load_suite(name: str, seed: int, skip_broken: bool) -> LoadedTasks:
    if name == "builtin":
        return LoadedTasks(tuple(builtin_suite(seed)))
    if name == "leaky":   # the hack-demo family (envs.leak), honest demonstrations
        return LoadedTasks(tuple(leaky_suite(seed)))
    return load_tasks(Path(name), skip_broken=skip_broken)


def _docker_config(args: argparse.Namespace) -> DockerConfig:
    return DockerConfig(image=args.image, base_url=args.docker_url)


def _limits(args: argparse.Namespace) -> SandboxLimits:
    return SandboxLimits(timeout_s=args.timeout)


def cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    loaded = _load_suite(args.suite, args.seed, args.skip_broken)
    tasks = [task for task in loaded.tasks if args.split == "all" or task.split == args.split]
    for task in tasks:
        if args.json:
            out.write(json.dumps({"task_id": task.task_id, "family": task.family, "split": task.split,
                                  "difficulty": task.difficulty, "has_solution": bool(task.solution),
                                  "instruction": task.instruction}) + "\n")
        else:
            first = next((line for line in task.instruction.splitlines() if line.strip()), "")
            out.write(f"{task.task_id}\t{task.split}\t{task.family}\t{task.difficulty}\t{first[:100]}\n")
    for broken in loaded.broken:
        err.write(f"skipped broken task: {broken.error}\n")
    err.write(f"{len(tasks)} task(s)" + (f", {len(loaded.broken)} broken task(s) skipped" if loaded.broken else "")
              + "\n")
    return 0


def _read_calls(path: Path) -> list[ToolCall]:
    calls = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TaskError(f"{path}: cannot read: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                calls.append(ToolCall.from_dict(json.loads(line)))
            except (json.JSONDecodeError, ValueError) as exc:
                raise TaskError(f"{path}:{number}: not a tool call: {exc}") from None
    return calls


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    tasks = {task.task_id: task for task in _load_suite(args.suite, args.seed, skip_broken=True).tasks}
    task = tasks.get(args.task_id)
    if task is None:
        raise TaskError(f"no task {args.task_id!r} in suite {args.suite!r} ({len(tasks)} tasks; "
                        f"`horizonrl-env list {args.suite}` lists them)")
    calls = _read_calls(Path(args.calls)) if args.calls else scripted_solution(task)
    factory = None
    if args.backend == "docker":
        docker = _docker_config(args)

        def factory(files, limits):  # noqa: ANN001, ANN202 - a SandboxFactory
            return make_sandbox("docker", files, limits, docker=docker)
    with CodingEnv(task, backend=args.backend, limits=_limits(args), factory=factory) as env:
        if not args.json:
            out.write(f"# task {task.task_id} ({task.family}, {task.split}, difficulty {task.difficulty})\n"
                      f"# instruction:\n{task.instruction.rstrip()}\n")
        for call in calls:
            step = env.step(call)
            if args.json:
                out.write(json.dumps({"call": call.to_dict(), "observation": step.observation,
                                      "error": step.error, "done": step.done}) + "\n")
            else:
                out.write(f"\n>>> {call.name} {json.dumps(call.arguments, ensure_ascii=False)}\n{step.observation}\n")
            if step.done:
                break
        grade = env.grade()
    if args.json:
        out.write(json.dumps({"grade": {"passed": grade.passed, "reward": grade.reward, "output": grade.output}}) + "\n")
    else:
        out.write(f"\n# grade: {'PASSED' if grade.passed else 'FAILED'} (reward {grade.reward})\n{grade.output}\n")
    return 0 if grade.passed else 1


def cmd_exec(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SandboxError("no command given: horizonrl-env exec [options] -- CMD ...")
    line = command[0] if len(command) == 1 else shlex.join(command)
    if args.backend == "docker" and args.protected:
        raise SandboxError("--protected applies to the local backend; a docker container sees only its image and "
                           "its own /work")
    if args.backend == "local":
        sandbox = LocalSandbox({}, _limits(args), protected=args.protected)
    else:
        sandbox = make_sandbox("docker", {}, _limits(args), docker=_docker_config(args))
    try:
        result = sandbox.exec(line)
    finally:
        sandbox.close()
    out.write(json.dumps({"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                          "timed_out": result.timed_out}) + "\n")
    return 0


def cmd_docker_image(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = DockerConfig(image=args.tag, base_url=args.docker_url)
    if args.rootfs and Path(args.rootfs).exists():
        image = build_image(Path(args.rootfs), args.tag, config)
    else:
        debootstrap = shutil.which("debootstrap")
        if debootstrap is None:
            raise SandboxError("debootstrap is not installed (apt-get install debootstrap), or pass --rootfs DIR "
                               "of an existing root file system")
        with tempfile.TemporaryDirectory(prefix="horizonrl-rootfs-") as tmp:
            rootfs = Path(args.rootfs) if args.rootfs else Path(tmp) / "rootfs"
            argv = [debootstrap, "--variant=minbase", f"--include={args.packages}", args.release, str(rootfs),
                    args.mirror]
            err.write(f"$ {shlex.join(argv)}\n")
            if subprocess.run(argv, stdout=err, stderr=err).returncode != 0:
                raise SandboxError(f"debootstrap failed: {shlex.join(argv)}")
            image = build_image(rootfs, args.tag, config)
    out.write(json.dumps({"image": args.tag, "id": image}) + "\n")
    return 0


def cmd_docker_cleanup(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    removed = cleanup_stale(args.label, DockerConfig(base_url=args.docker_url), include_live_owners=args.all)
    out.write(json.dumps({"removed": removed}) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="horizonrl-env", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)

    def sandbox_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--backend", choices=BACKENDS, default="local")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds per command (default 10)")
        p.add_argument("--image", default=DEFAULT_IMAGE, help="docker backend: the image")
        p.add_argument("--docker-url", default=DEFAULT_DOCKER_URL, help="docker backend: the engine's API")

    p = sub.add_parser("list", help="list the tasks of a suite")
    p.add_argument("suite", nargs="?", default="builtin")
    p.add_argument("--split", choices=(*SPLITS, "all"), default="all")
    p.add_argument("--seed", type=int, default=0, help="seed of the builtin suite")
    p.add_argument("--skip-broken", action="store_true", help="report broken tasks instead of failing")
    p.add_argument("--json", action="store_true", help="one JSON object per task")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("run", help="play a task's reference solution (or --calls) and grade it")
    p.add_argument("task_id")
    p.add_argument("--suite", default="builtin")
    p.add_argument("--seed", type=int, default=0, help="seed of the builtin suite")
    p.add_argument("--calls", help="a JSONL file of tool calls to play instead of the reference solution")
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")
    sandbox_options(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("exec", help="run one command in a fresh sandbox; prints one JSON line")
    p.add_argument("--protected", action="append", default=[], metavar="PATH",
                   help="a host path to mask inside the sandbox (repeatable)")
    sandbox_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(handler=cmd_exec)

    p = sub.add_parser("docker-image", help="build the docker backend's image (debootstrap + import, no registry)")
    p.add_argument("--tag", default=DEFAULT_IMAGE)
    p.add_argument("--rootfs", help="an existing root file system dir to import (else debootstrap makes one)")
    p.add_argument("--packages", default=DEFAULT_PACKAGES, help=f"debootstrap --include (default {DEFAULT_PACKAGES})")
    p.add_argument("--release", default="bookworm")
    p.add_argument("--mirror", default="http://deb.debian.org/debian")
    p.add_argument("--docker-url", default=DEFAULT_DOCKER_URL)
    p.set_defaults(handler=cmd_docker_image)

    p = sub.add_parser("docker-cleanup", help="remove containers left by crashed workers")
    p.add_argument("--label", default="default", help="the pool's DockerConfig.label")
    p.add_argument("--all", action="store_true", help="also containers whose owner process still runs")
    p.add_argument("--docker-url", default=DEFAULT_DOCKER_URL)
    p.set_defaults(handler=cmd_docker_cleanup)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args, sys.stdout, sys.stderr)
    except (TaskError, SandboxError, ValueError) as exc:
        sys.stderr.write(f"horizonrl-env {args.what}: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
