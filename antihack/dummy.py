"""Plausible dummy output for a blocked call (ALGORITHMS.md §6.2, last column).

The output depends only on the call and the rule hit it is about, so the same blocked read of the
same path gives the same ``cat: X: No such file or directory`` every time. Writes are handled by
the guard's per-episode shadow (see :mod:`antihack.guard`); this module only words the messages.
"""

from __future__ import annotations

import posixpath
import re
import zlib
from urllib.parse import urlsplit

from antihack.context import ToolCall
from antihack.rules import RuleHit

_MISSING_WORDING = {
    "ls": "ls: cannot access '{s}': No such file or directory",
    "stat": "stat: cannot statx '{s}': No such file or directory",
    "cp": "cp: cannot stat '{s}': No such file or directory",
    "mv": "mv: cannot stat '{s}': No such file or directory",
    "rsync": "rsync: [sender] link_stat \"{s}\" failed: No such file or directory (2)",
    "ln": "ln: failed to access '{s}': No such file or directory",
    "cd": "bash: cd: {s}: No such file or directory",
    "pushd": "bash: pushd: {s}: No such file or directory",
    "head": "head: cannot open '{s}' for reading: No such file or directory",
    "tail": "tail: cannot open '{s}' for reading: No such file or directory",
    "less": "{s}: No such file or directory",
    "more": "more: cannot open {s}: No such file or directory",
    "tar": "tar: {s}: Cannot stat: No such file or directory\ntar: Exiting with failure status due to previous errors",
    "zip": "\tzip warning: name not matched: {s}\n\nzip error: Nothing to do!",
    "python": "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n"
              "FileNotFoundError: [Errno 2] No such file or directory: '{s}'",
    "read_file": "Error: {s}: No such file or directory",
    "source": "bash: {s}: No such file or directory",
    ".": "bash: {s}: No such file or directory",
    "bash": "bash: {s}: No such file or directory",
    "sh": "sh: 0: cannot open {s}: No such file",
    "http.server": "OSError: [Errno 98] Address already in use",
}
_SILENT_SEARCH = {"find", "grep", "egrep", "fgrep", "rg", "ag", "ack", "locate", "fd", "fdfind", "tree", "du"}


def _host(target: str) -> str:
    t = target if "://" in target else "http://" + target
    try:
        return urlsplit(t).hostname or target
    except ValueError:
        return target


def missing_file(command: str, subject: str) -> str:
    """The error a tool prints for a file that does not exist."""
    name = command.rsplit("/", 1)[-1]
    if name in _SILENT_SEARCH:
        return ""
    if re.match(r"^(python[0-9.]*|pypy[0-9.]*)$", name):
        name = "python"
    wording = _MISSING_WORDING.get(name, "{c}: {s}: No such file or directory")
    return wording.format(c=name, s=subject)


def network_failure(command: str, subject: str) -> str:
    host = _host(subject)
    name = command.rsplit("/", 1)[-1]
    if name.startswith("wget"):
        return (f"Resolving {host} ({host})... failed: Temporary failure in name resolution.\n"
                f"wget: unable to resolve host address '{host}'")
    if name == "git":
        return f"fatal: unable to access '{subject}': Could not resolve host: {host}"
    if name in ("pip", "pip3", "uv", "pipx", "easy_install"):
        return (f"ERROR: Could not find a version that satisfies the requirement {subject} (from versions: none)\n"
                f"ERROR: No matching distribution found for {subject}")
    if name in ("npm", "yarn", "pnpm"):
        return f"npm ERR! code ENOTFOUND\nnpm ERR! network request to https://registry.npmjs.org/{subject} failed"
    if name in ("apt", "apt-get"):
        return f"E: Unable to locate package {subject}"
    if name in ("python", "node", "source") or re.match(r"^python[0-9.]*$", name):
        return ("Traceback (most recent call last):\n  ...\n"
                f"urllib.error.URLError: <urlopen error [Errno -3] Temporary failure in name resolution>")
    if name in ("ssh", "scp", "sftp", "rsync"):
        return f"ssh: Could not resolve hostname {host}: Temporary failure in name resolution"
    if name in ("nc", "ncat", "netcat", "telnet", "socat"):
        return f"{name}: getaddrinfo for host \"{host}\": Temporary failure in name resolution"
    return f"curl: (6) Could not resolve host: {host}"


def git_failure(hit: RuleHit) -> str:
    if hit.rule_id == "git.fetch":
        remote = hit.subject if hit.subject not in ("fetch", "pull", "ls-remote", "remote", "clone") else "origin"
        return f"fatal: '{remote}' does not appear to be a git repository\nfatal: Could not read from remote repository."
    return f"fatal: bad revision '{hit.subject or 'HEAD'}'"


def permission_denied(command: str, subject: str) -> str:
    name = command.rsplit("/", 1)[-1] or "bash"
    if name == "rm":
        return f"rm: cannot remove '{subject}': Permission denied"
    if name in ("kill", "pkill", "killall"):
        if name != "kill":
            return ""  # pkill/killall print nothing when they signal nothing
        target = subject.split()[-1] if subject.split() else subject
        if not target.isdigit():
            target = str(1000 + zlib.crc32(subject.encode()) % 30000)  # a stable, plausible pid
        return f"bash: kill: ({target}) - Operation not permitted"
    if name in ("sudo", "su", "doas"):
        return f"bash: {name}: Permission denied"
    if subject and subject != name:
        return f"bash: {subject}: Permission denied"
    return f"bash: {name}: Permission denied"


def write_confirmation(call: ToolCall) -> str:
    """What the environment prints after a successful write (the lead's env wording)."""
    if call.name == "write_file":
        return f"Wrote {call.arg('path')}."
    if call.name == "str_replace":
        return f"Edited {call.arg('path')}."
    return ""


def observation_for(call: ToolCall, hit: RuleHit) -> str:
    """The dummy observation for a blocked call whose most telling rule hit is ``hit``."""
    if call.name in ("write_file", "str_replace"):
        return write_confirmation(call)
    if call.name == "read_file":
        if hit.category == "sandbox_abuse":
            return f"Error: {call.arg('path')}: Permission denied"
        return missing_file("read_file", call.arg("path"))
    cat = hit.category
    if cat == "protected_read":
        if hit.rule_id == "protected.serve" and hit.command in ("curl", "wget"):
            return f"curl: (7) Failed to connect to {_host(hit.subject)} port 80: Connection refused"
        if hit.rule_id == "protected.serve":
            return missing_file("http.server", hit.subject)
        return missing_file(hit.command, hit.subject or "")
    if cat == "network_fetch":
        return network_failure(hit.command, hit.subject)
    if cat == "git_future":
        return git_failure(hit)
    if cat == "secret_read":
        return ""
    if cat == "sandbox_abuse":
        return permission_denied(hit.command, hit.subject)
    if cat in ("test_tamper", "grader_tamper"):
        if hit.rule_id == "grader.kill":
            return permission_denied(hit.command, hit.subject)
        return ""  # shell writes succeed silently (and go to the shadow)
    if hit.rule_id == "obfuscation.unparseable":
        return "bash: line 1: syntax error: unexpected end of file"
    return ""


def shadow_path_display(path: str, workdir: str) -> str:
    """Path as the agent would see it in messages (relative to the work dir when inside it)."""
    if path.startswith(workdir.rstrip("/") + "/"):
        return posixpath.relpath(path, workdir)
    return path
