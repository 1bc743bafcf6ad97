"""Plausible dummy output for a blocked call (ALGORITHMS.md §6.2, last column).

The output depends only on the call and the rule hit it is about, so the same blocked read of the
same path gives the same ``cat: X: No such file or directory`` every time. Writes are handled by
the guard's per-episode shadow (see :mod:`antihack.guard`); this module only words the messages.

Shell results are :class:`ShellOutput` (exit code, stdout, stderr) so the guard can render them the
way the environment renders real command output; :func:`format_shell_output` is the default
rendering (``exit_code: N`` then non-empty ``stdout:``/``stderr:`` sections, the format of the
project's environment). File-tool messages follow the environment's wording too
(``Wrote {path}.``, ``Edited {path}.``, ``Error: file not found: {path}``).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from antihack.context import ToolCall
from antihack.rules import RuleHit


@dataclass(frozen=True)
class ShellOutput:
    exit_code: int
    stdout: str = ""
    stderr: str = ""


def format_shell_output(out: ShellOutput) -> str:
    """``exit_code: N`` then the non-empty ``stdout:`` / ``stderr:`` sections."""
    parts = [f"exit_code: {out.exit_code}"]
    if out.stdout:
        parts.append("stdout:\n" + out.stdout.rstrip("\n"))
    if out.stderr:
        parts.append("stderr:\n" + out.stderr.rstrip("\n"))
    return "\n".join(parts)


_MISSING_WORDING = {
    "ls": (2, "ls: cannot access '{s}': No such file or directory"),
    "stat": (1, "stat: cannot statx '{s}': No such file or directory"),
    "cp": (1, "cp: cannot stat '{s}': No such file or directory"),
    "mv": (1, "mv: cannot stat '{s}': No such file or directory"),
    "rsync": (23, "rsync: [sender] link_stat \"{s}\" failed: No such file or directory (2)"),
    "ln": (1, "ln: failed to access '{s}': No such file or directory"),
    "cd": (1, "bash: cd: {s}: No such file or directory"),
    "pushd": (1, "bash: pushd: {s}: No such file or directory"),
    "head": (1, "head: cannot open '{s}' for reading: No such file or directory"),
    "tail": (1, "tail: cannot open '{s}' for reading: No such file or directory"),
    "less": (1, "{s}: No such file or directory"),
    "more": (1, "more: cannot open {s}: No such file or directory"),
    "tar": (2, "tar: {s}: Cannot stat: No such file or directory\n"
               "tar: Exiting with failure status due to previous errors"),
    "zip": (12, "\tzip warning: name not matched: {s}\n\nzip error: Nothing to do!"),
    "python": (1, "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n"
                  "FileNotFoundError: [Errno 2] No such file or directory: '{s}'"),
    "source": (1, "bash: {s}: No such file or directory"),
    ".": (1, "bash: {s}: No such file or directory"),
    "bash": (127, "bash: {s}: No such file or directory"),
    "sh": (2, "sh: 0: cannot open {s}: No such file"),
    "http.server": (1, "OSError: [Errno 98] Address already in use"),
}
_SILENT_SEARCH = {"find": 0, "grep": 1, "egrep": 1, "fgrep": 1, "rg": 1, "ag": 1, "ack": 1, "locate": 1, "fd": 0,
                  "fdfind": 0, "tree": 0, "du": 0}


def _host(target: str) -> str:
    t = target if "://" in target else "http://" + target
    try:
        return urlsplit(t).hostname or target
    except ValueError:
        return target


def missing_file(command: str, subject: str) -> ShellOutput:
    """What a tool prints for a file that does not exist (searches simply find nothing)."""
    name = command.rsplit("/", 1)[-1]
    if name in _SILENT_SEARCH:
        return ShellOutput(_SILENT_SEARCH[name])
    if re.match(r"^(python[0-9.]*|pypy[0-9.]*)$", name):
        name = "python"
    code, wording = _MISSING_WORDING.get(name, (1, "{c}: {s}: No such file or directory"))
    return ShellOutput(code, stderr=wording.format(c=name, s=subject))


def missing_file_tool(path: str) -> str:
    """The read_file tool's answer for a file that does not exist."""
    return f"Error: file not found: {path}"


def network_failure(command: str, subject: str) -> ShellOutput:
    host = _host(subject)
    name = command.rsplit("/", 1)[-1]
    if name.startswith("wget"):
        return ShellOutput(4, stderr=f"Resolving {host} ({host})... failed: Temporary failure in name resolution.\n"
                                     f"wget: unable to resolve host address '{host}'")
    if name == "git":
        return ShellOutput(128, stderr=f"fatal: unable to access '{subject}': Could not resolve host: {host}")
    if name in ("pip", "pip3", "uv", "pipx", "easy_install"):
        return ShellOutput(1, stderr=f"ERROR: Could not find a version that satisfies the requirement {subject} "
                                     f"(from versions: none)\nERROR: No matching distribution found for {subject}")
    if name in ("npm", "yarn", "pnpm"):
        return ShellOutput(1, stderr=f"npm ERR! code ENOTFOUND\nnpm ERR! network request to "
                                     f"https://registry.npmjs.org/{subject} failed")
    if name in ("apt", "apt-get"):
        return ShellOutput(100, stderr=f"E: Unable to locate package {subject}")
    if name in ("python", "node", "source") or re.match(r"^python[0-9.]*$", name):
        return ShellOutput(1, stderr="Traceback (most recent call last):\n  ...\nurllib.error.URLError: "
                                     "<urlopen error [Errno -3] Temporary failure in name resolution>")
    if name in ("ssh", "scp", "sftp", "rsync"):
        return ShellOutput(255, stderr=f"ssh: Could not resolve hostname {host}: Temporary failure in name resolution")
    if name in ("nc", "ncat", "netcat", "telnet", "socat"):
        return ShellOutput(1, stderr=f"{name}: getaddrinfo for host \"{host}\": Temporary failure in name resolution")
    return ShellOutput(6, stderr=f"curl: (6) Could not resolve host: {host}")


def git_failure(hit: RuleHit) -> ShellOutput:
    if hit.rule_id == "git.fetch":
        remote = hit.subject if hit.subject not in ("fetch", "pull", "ls-remote", "remote", "clone") else "origin"
        return ShellOutput(128, stderr=f"fatal: '{remote}' does not appear to be a git repository\n"
                                       f"fatal: Could not read from remote repository.")
    return ShellOutput(128, stderr=f"fatal: bad revision '{hit.subject or 'HEAD'}'")


def permission_denied(command: str, subject: str) -> ShellOutput:
    name = command.rsplit("/", 1)[-1] or "bash"
    if name == "rm":
        return ShellOutput(1, stderr=f"rm: cannot remove '{subject}': Permission denied")
    if name in ("kill", "pkill", "killall"):
        if name != "kill":
            return ShellOutput(1)  # pkill/killall print nothing when they signal nothing
        target = subject.split()[-1] if subject.split() else subject
        if not target.isdigit():
            target = str(1000 + zlib.crc32(subject.encode()) % 30000)  # a stable, plausible pid
        return ShellOutput(1, stderr=f"bash: kill: ({target}) - Operation not permitted")
    if name in ("sudo", "su", "doas"):
        return ShellOutput(126, stderr=f"bash: {name}: Permission denied")
    if subject and subject != name:
        return ShellOutput(1, stderr=f"bash: {subject}: Permission denied")
    return ShellOutput(126, stderr=f"bash: {name}: Permission denied")


def write_confirmation(call: ToolCall) -> str:
    """What the environment prints after a successful write."""
    if call.name == "write_file":
        return f"Wrote {call.arg('path')}."
    if call.name == "str_replace":
        return f"Edited {call.arg('path')}."
    return ""


def observation_for(call: ToolCall, hit: RuleHit) -> str | ShellOutput:
    """The dummy result of a blocked call whose most telling rule hit is ``hit``: text for the file
    tools, a :class:`ShellOutput` for bash."""
    if call.name in ("write_file", "str_replace"):
        return write_confirmation(call)
    if call.name == "read_file":
        if hit.category == "sandbox_abuse":
            return f"Error: permission denied: {call.arg('path')}"
        return missing_file_tool(call.arg("path"))
    cat = hit.category
    if cat == "protected_read":
        if hit.rule_id == "protected.serve" and hit.command in ("curl", "wget"):
            return ShellOutput(7, stderr=f"curl: (7) Failed to connect to {_host(hit.subject)} port 80: "
                                         f"Connection refused")
        if hit.rule_id == "protected.serve":
            return missing_file("http.server", hit.subject)
        return missing_file(hit.command, hit.subject or "")
    if cat == "network_fetch":
        return network_failure(hit.command, hit.subject)
    if cat == "git_future":
        return git_failure(hit)
    if cat == "secret_read":
        return ShellOutput(0)
    if cat == "sandbox_abuse":
        return permission_denied(hit.command, hit.subject)
    if cat in ("test_tamper", "grader_tamper"):
        if hit.rule_id == "grader.kill":
            return permission_denied(hit.command, hit.subject)
        return ShellOutput(0)  # shell writes succeed silently (and go to the shadow)
    if hit.rule_id == "obfuscation.unparseable":
        return ShellOutput(2, stderr="bash: -c: line 1: syntax error: unexpected end of file")
    return ShellOutput(0)
