"""A tool call -> :class:`CallFacts`: what it reads, lists, writes, fetches and runs.

This is the normaliser of ALGORITHMS.md §6.1. It knows the *semantics* of commands (which
arguments of ``grep`` are files, that ``cp -r`` copies a tree, that ``bash -c`` runs its argument,
that ``find … -exec cat {} \\;`` reads what ``find`` found) and re-enters itself for nested code:
``bash -c``/``sh -c``/``eval``/``su -c``/``watch``, scripts piped or here-doc'd into a shell or
Python, ``python -c`` (through :mod:`antihack.pycode`), ``node -e``/``perl -e``/``ruby -e``, and the
text of files written with ``write_file``/``str_replace``/redirections. Base64 text decoded
statically anywhere is recorded, and so is whether decoded text was executed.

The rules (:mod:`antihack.rules`) only look at the facts; they never parse.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from antihack.context import TaskContext, ToolCall
from antihack.paths import OPAQUE, home_for, resolve
from antihack.pycode import PyFacts, analyse_python
from antihack.shell import Cmd, ShellParser, Word, b64_text, printable_text, static_step

MAX_DEPTH = 8

SHELLS = frozenset({"bash", "sh", "zsh", "dash", "ksh", "ash", "fish", "rbash", "mksh", "tcsh", "csh"})
_PYTHON = re.compile(r"^(python[0-9.]*|pypy[0-9.]*|py)$")
INLINE_INTERPRETERS = {"node": ("-e", "--eval", "-p", "--print"), "nodejs": ("-e", "--eval", "-p", "--print"),
                       "deno": ("eval",), "bun": ("-e", "--eval"), "perl": ("-e", "-E"), "ruby": ("-e",),
                       "php": ("-r",), "lua": ("-e",), "Rscript": ("-e",), "osascript": ("-e",)}
_WRAPPER_OPTS_WITH_VALUE = {
    "sudo": {"-u", "-g", "-C", "-D", "-h", "-p", "-r", "-t", "-U", "--user", "--group"},
    "doas": {"-u", "-C"},
    "timeout": {"-s", "-k", "--signal", "--kill-after"},
    "nice": {"-n", "--adjustment"},
    "ionice": {"-c", "-n", "-p", "--class", "--classdata"},
    "stdbuf": {"-i", "-o", "-e"},
    "strace": {"-o", "-e", "-p", "-s", "-E", "-u"},
    "ltrace": {"-o", "-e", "-p"},
    "chroot": set(),
    "setsid": set(), "nohup": set(), "time": {"-f", "-o"}, "command": set(), "builtin": set(), "exec": {"-a"},
    "unbuffer": set(), "chronic": set(), "caffeinate": set(), "catchsegv": set(), "faketime": set(),
    "flock": {"-w", "-E", "--timeout"}, "runuser": {"-u", "-g"}, "firejail": set(), "proxychains": set(),
    "proxychains4": set(), "torsocks": set(), "tsocks": set(), "xvfb-run": {"-a", "-s", "-n"},
}
_XARGS_OPTS_WITH_VALUE = {"-I", "-i", "-n", "-P", "-d", "-L", "-l", "-s", "-E", "-a", "--arg-file",
                          "--max-args", "--max-procs", "--delimiter", "--replace"}
READ_CMDS = frozenset({
    "cat", "tac", "head", "tail", "less", "more", "most", "nl", "od", "xxd", "hexdump", "hd", "strings",
    "md5sum", "sha1sum", "sha256sum", "sha512sum", "b2sum", "cksum", "sum", "wc", "sort", "uniq", "cut",
    "paste", "file", "diff", "diff3", "sdiff", "cmp", "comm", "vim", "vi", "view", "nvim", "nano", "emacs",
    "ed", "ex", "bat", "batcat", "iconv", "fold", "fmt", "pr", "column", "expand", "unexpand", "zcat",
    "bzcat", "xzcat", "zless", "zmore", "gunzip", "unzip", "shuf", "split", "csplit", "base64", "base32",
    "basenc", "readlink", "realpath", "sqlite3", "xmllint", "look", "join", "tsort", "source", ".", "dos2unix",
    "unix2dos", "colordiff", "wdiff", "vimdiff", "numfmt", "rev", "tr", "lp", "mail", "pygmentize",
    "highlight", "csvlook", "csvcut", "pandoc", "jq", "yq", "xq", "mlr", "sed", "awk", "gawk", "mawk",
    "nawk", "grep", "egrep", "fgrep", "zgrep", "rg", "ag", "ack", "cp", "mv", "ln", "install", "rsync",
    "scp", "tar", "zip", "7z", "7za", "cpio", "ar", "gzip", "bzip2", "xz", "zstd", "lz4", "openssl",
    "gpg", "tee",
})
PATTERN_FIRST = frozenset({"grep", "egrep", "fgrep", "zgrep", "rg", "ag", "ack", "sed", "awk", "gawk", "mawk",
                           "nawk", "jq", "yq", "xq", "look"})
LIST_CMDS = frozenset({"ls", "dir", "vdir", "tree", "du", "stat", "lsattr", "getfacl", "exa", "eza", "lsd",
                       "fd", "fdfind", "locate", "mlocate", "plocate", "find", "namei"})
TEXT_ONLY_CMDS = frozenset({"echo", "printf", "true", "false", "sleep", "exit", "return", "unset", "alias",
                            "unalias", "set", "shopt", "kill", "pkill", "killall", "pgrep", "ps", "top",
                            "which", "type", "hash", "whoami", "id", "date", "uname", "hostname", "history",
                            "clear", "wait", "jobs", "bg", "fg", "trap", "umask", "ulimit", "read", "seq",
                            "yes", "expr", "bc", "let", "export", "declare", "local", "readonly", "typeset",
                            "getopts", "shift", "break", "continue", "tput", "stty", "logger", "notify-send",
                            "man", "info", "help", "whatis", "apropos", "for", "pip", "pip3", "npm", "yarn",
                            "pnpm", "apt", "apt-get", "git", "curl", "wget", "printenv", "env", "nproc",
                            "free", "uptime", "df", "lscpu", "mkdir"})
WRITE_CMDS = {"rm": "delete", "rmdir": "delete", "unlink": "delete", "shred": "delete", "touch": "write",
              "truncate": "write", "chmod": "chmod", "chown": "chmod", "chgrp": "chmod", "chattr": "chmod",
              "mkdir": "mkdir", "mkfifo": "write", "setfacl": "chmod"}
FETCH_CMDS = frozenset({"curl", "wget", "http", "https", "httpie", "xh", "aria2c", "axel", "lynx", "links",
                        "links2", "w3m", "elinks", "fetch", "lwp-request", "lwp-download", "GET", "POST",
                        "HEAD", "wget2", "curlie"})
SOCKET_CMDS = frozenset({"nc", "ncat", "netcat", "telnet", "socat", "ssh", "sftp", "ftp", "lftp", "tftp",
                         "dig", "nslookup", "host", "ping", "ping6", "traceroute", "tracepath", "whois",
                         "mosh", "sshpass", "rsh", "rlogin"})
SERVE_CMDS = frozenset({"http-server", "serve", "live-server", "httpd", "lighttpd", "nginx", "caddy",
                        "twistd", "php", "ruby", "busybox", "npx", "simple-http-server", "miniserve", "darkhttpd"})
INSTALL_MANAGERS = frozenset({"pip", "pip3", "pipx", "uv", "poetry", "conda", "mamba", "micromamba", "npm",
                              "yarn", "pnpm", "apt", "apt-get", "aptitude", "yum", "dnf", "apk", "gem",
                              "cargo", "go", "brew", "easy_install", "pdm", "pipenv", "bundle", "composer"})
_INSTALL_VERBS: dict[str, set[str]] = {
    "pip": {"install", "download", "wheel"}, "pip3": {"install", "download", "wheel"}, "uv": {"install", "add"},
    "pipx": {"install", "run", "inject"}, "easy_install": {"install"}, "npm": {"install", "i", "add", "isntall"},
    "pnpm": {"install", "i", "add"}, "yarn": {"add", "install"}, "apt": {"install"}, "apt-get": {"install", "download"},
    "aptitude": {"install"}, "yum": {"install"}, "dnf": {"install"}, "apk": {"add"}, "gem": {"install"},
    "cargo": {"install", "add"}, "go": {"get", "install"}, "brew": {"install"}, "poetry": {"add"},
    "pdm": {"add"}, "pipenv": {"install"}, "conda": {"install"}, "mamba": {"install"}, "micromamba": {"install"},
    "bundle": {"add", "install"}, "composer": {"require"},
}
_PIP_OPTS_WITH_VALUE = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
                        "--extra-index-url", "-f", "--find-links", "--trusted-host", "-t", "--target",
                        "--prefix", "--root", "--python-version", "--platform", "--implementation", "--abi",
                        "--src", "--upgrade-strategy", "--progress-bar", "--log", "--cache-dir", "--proxy",
                        "--cert", "--client-cert", "--timeout", "--retries", "--exists-action", "--global-option",
                        "--install-option", "--config-settings", "-C", "--python", "-d", "--dest", "--only-binary",
                        "--no-binary", "--report"}
_CURL_OPTS_WITH_VALUE = {"-o", "--output", "-T", "--upload-file", "-d", "--data", "--data-binary", "--data-raw",
                         "--data-ascii", "--data-urlencode", "-F", "--form", "-x", "--proxy", "-u", "--user",
                         "-H", "--header", "-X", "--request", "-A", "--user-agent", "-e", "--referer", "-K",
                         "--config", "--url", "--resolve", "--connect-to", "-m", "--max-time", "-b", "--cookie",
                         "-c", "--cookie-jar", "-w", "--write-out", "--retry", "-r", "--range", "-E", "--cert",
                         "--cacert", "--key", "--connect-timeout", "-Y", "-y", "--limit-rate", "-C",
                         "--continue-at", "--interface", "--dns-servers", "--preproxy", "--socks5",
                         "--socks5-hostname", "--socks4", "--proxy-user", "-U", "--output-dir", "--json", "-z"}
_WGET_OPTS_WITH_VALUE = {"-O", "--output-document", "-P", "--directory-prefix", "-i", "--input-file",
                         "--post-file", "--post-data", "-e", "--execute", "-U", "--user-agent", "--header",
                         "-o", "--output-file", "-a", "--append-output", "-t", "--tries", "-T", "--timeout",
                         "--user", "--password", "--body-file", "--method", "-Q", "--quota", "-l", "--level",
                         "--load-cookies", "--save-cookies", "-w", "--wait", "--bind-address", "--referer"}
_VALUE_OPTS: dict[str, frozenset[str]] = {
    "head": frozenset({"-n", "-c", "--lines", "--bytes"}), "tail": frozenset({"-n", "-c", "--lines", "--bytes",
                                                                              "-s", "--pid"}),
    "sed": frozenset({"-e", "-f", "-l", "--expression", "--file", "--line-length"}),
    "awk": frozenset({"-f", "-v", "-F", "--file", "--assign", "--field-separator"}),
    "gawk": frozenset({"-f", "-v", "-F"}), "mawk": frozenset({"-f", "-v", "-F"}), "nawk": frozenset({"-f", "-v", "-F"}),
    "sort": frozenset({"-k", "-t", "-o", "-S", "-T", "--key", "--field-separator", "--output"}),
    "cut": frozenset({"-d", "-f", "-c", "-b", "--delimiter", "--fields"}), "uniq": frozenset({"-f", "-s", "-w"}),
    "jq": frozenset({"--arg", "--argjson", "--slurpfile", "--rawfile", "--indent", "-L"}),
    "xxd": frozenset({"-c", "-g", "-l", "-s", "-o", "-n"}), "od": frozenset({"-A", "-t", "-N", "-j", "-w"}),
    "hexdump": frozenset({"-n", "-s", "-e", "-f"}), "nl": frozenset({"-b", "-s", "-w", "-v", "-i"}),
    "fold": frozenset({"-w"}), "fmt": frozenset({"-w"}), "split": frozenset({"-l", "-b", "-n"}),
    "strings": frozenset({"-n", "-t", "-e"}), "diff": frozenset({"-U", "-C", "--label", "-x", "--exclude"}),
    "iconv": frozenset({"-f", "-t", "-o"}), "column": frozenset({"-t", "-s", "-c", "-o"}),
    "base64": frozenset({"-w", "--wrap"}), "shuf": frozenset({"-n", "-o", "-i"}),
    "openssl": frozenset({"-in", "-out", "-k", "-pass"}), "gpg": frozenset({"-o", "--output", "-r"}),
}
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+")
_URL_ANYWHERE = re.compile(r"\b(?:https?|ftp|git|ssh|wss?)://[^\s'\"<>`)]+")
_HOSTISH = re.compile(r"^(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}(?::\d+)?(?:/\S*)?$|^localhost(?::\d+)?(?:/\S*)?$|"
                      r"^\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?(?:/\S*)?$")
_DEV_TCP = re.compile(r"/dev/(tcp|udp)/([^/\s]+)/(\d+)")
_B64_LITERAL = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_DECODER_HINT = re.compile(r"base64|b64decode|atob|fromhex|unhexlify|xxd|openssl|decodebytes|codecs|pack\(|"
                           r"\bhex\b|Buffer\.from", re.I)
_STRING_LITERAL = re.compile(r"""(['"`])((?:\\.|(?!\1)[^\\\n])*)\1""")
_NET_HINT = re.compile(r"fetch\(|https?\.(get|request)|axios|XMLHttpRequest|\bnet\.|socket|LWP|Net::HTTP|"
                       r"open-uri|HTTP::Tiny|urllib|requests|curl|URI\.open|Socket|http\.client")
_INLINE_EXEC = re.compile(r"""(?:execSync|exec|spawnSync|spawn|execFileSync|system|popen|qx)\s*\(\s*(['"`])((?:\\.|(?!\1)[^\\\n])*)\1""")
_INLINE_DYNAMIC_EXEC = re.compile(r"""\b(?:execSync|exec|spawnSync|spawn|system|popen|eval|qx)\s*\(\s*(?!['"`])[^)\s]""")
_HEX_LITERAL = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}){8,}(?![0-9A-Fa-f])")
_BACKTICK_EXEC = re.compile(r"`([^`\n]+)`")
_INLINE_ENV = (
    (re.compile(r"process\.env(?:\.([A-Za-z_]\w*)|\[\s*['\"]([^'\"]+)['\"]\s*\])?"), "node"),
    (re.compile(r"\$ENV\{\s*['\"]?([A-Za-z_]\w*)['\"]?\s*\}|%ENV()"), "perl"),
    (re.compile(r"ENV\[\s*['\"]([A-Za-z_]\w*)['\"]\s*\]|ENV\.(?:to_h|each|inspect|keys|to_a)()"), "ruby"),
    (re.compile(r"getenv\(\s*['\"]([A-Za-z_]\w*)['\"]\s*\)|\$_ENV\b()|\$_SERVER\b()"), "php"),
)


@dataclass(frozen=True)
class Access:
    """A read-side touch of a path: ``kind`` is read, list, search, glob, probe, copy, link, serve, arg."""

    kind: str
    path: str
    raw: str
    command: str
    origin: tuple[str, ...]
    evidence: str
    skip_hidden: bool = False


@dataclass(frozen=True)
class WriteOp:
    """A write-side touch: ``op`` is write, append, edit, delete, chmod, link, mkdir, revert."""

    path: str
    raw: str
    op: str
    command: str
    origin: tuple[str, ...]
    evidence: str
    content: str | None = None
    old: str | None = None


@dataclass(frozen=True)
class NetUse:
    """Traffic to ``target`` (a URL or a host); ``kind`` is fetch, socket, proxy, code or arg."""

    target: str
    kind: str
    command: str
    origin: tuple[str, ...]
    evidence: str


@dataclass(frozen=True)
class EnvRead:
    """An environment read: ``name`` is a variable, ``*`` the whole environment, ``?`` unknown."""

    name: str
    command: str
    origin: tuple[str, ...]
    evidence: str


@dataclass(frozen=True)
class Install:
    manager: str
    spec: str
    kind: str            # package | url | local | index
    origin: tuple[str, ...]
    evidence: str


@dataclass(frozen=True)
class CodeUnit:
    """Python code seen in the call; ``path`` is the file it is written to (None when run now)."""

    facts: PyFacts
    path: str | None
    executed: bool
    origin: tuple[str, ...]
    evidence: str


@dataclass
class CallFacts:
    tool: str
    cmds: list[Cmd] = field(default_factory=list)
    accesses: list[Access] = field(default_factory=list)
    writes: list[WriteOp] = field(default_factory=list)
    net: list[NetUse] = field(default_factory=list)
    env_reads: list[EnvRead] = field(default_factory=list)
    installs: list[Install] = field(default_factory=list)
    code: list[CodeUnit] = field(default_factory=list)
    params: list[tuple[str, str]] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    unparseable: list[str] = field(default_factory=list)
    decoded: list[tuple[str, str]] = field(default_factory=list)
    decode_exec: list[str] = field(default_factory=list)
    dynamic_exec: list[str] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)       # decoded base64 literals found in the call


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _positionals(words: list[Word], with_value: set[str] | frozenset[str] = frozenset()) -> list[Word]:
    """Non-option words (after ``--`` everything counts); options in ``with_value`` eat the next word."""
    out: list[Word] = []
    skip = False
    ended = False
    for w in words:
        if skip:
            skip = False
            continue
        t = w.text
        if ended:
            out.append(w)
        elif t == "--":
            ended = True
        elif t.startswith("-") and t != "-":
            if t in with_value:
                skip = True
        else:
            out.append(w)
    return out


def _option_values(words: list[Word], names: set[str]) -> list[Word]:
    """Values of options in ``names`` (``-o FILE``, ``--output=FILE``, ``-oFILE`` for short ones)."""
    out: list[Word] = []
    for i, w in enumerate(words):
        t = w.text
        if t in names and i + 1 < len(words):
            out.append(words[i + 1])
        elif "=" in t and t.split("=", 1)[0] in names:
            out.append(Word(t.split("=", 1)[1], w.src))
        elif len(t) > 2 and t[:2] in names and not t.startswith("--"):
            out.append(Word(t[2:], w.src))
    return out


def _has_flag(words: list[Word], short: str = "", long: tuple[str, ...] = ()) -> bool:
    for w in words:
        t = w.text
        if t in long:
            return True
        if short and t.startswith("-") and not t.startswith("--") and any(c in t[1:] for c in short):
            return True
    return False


class Extractor:
    """Builds :class:`CallFacts` for calls of one task (the context fixes work dir and home)."""

    def __init__(self, ctx: TaskContext, parser: ShellParser) -> None:
        self.ctx = ctx
        self.parser = parser
        self.home = home_for(ctx.workdir)

    # --- entry -------------------------------------------------------------------------------
    def extract(self, call: ToolCall) -> CallFacts:
        facts = CallFacts(tool=call.name)
        wd = self.ctx.workdir
        origin = (call.name,)
        if call.name == "bash":
            self._shell(facts, call.arg("command"), wd, origin, 0)
            self._literals(facts, call.arg("command"), origin)
        elif call.name == "read_file":
            raw = call.arg("path")
            facts.accesses.append(Access("read", resolve(raw, wd, self.home), raw, "read_file", origin,
                                         f"read_file {raw}"))
        elif call.name == "write_file":
            raw, content = call.arg("path"), call.arg("content")
            path = resolve(raw, wd, self.home)
            facts.writes.append(WriteOp(path, raw, "write", "write_file", origin, f"write_file {raw}", content))
            self._written(facts, path, content, origin, 0)
            self._literals(facts, content, origin)
        elif call.name == "str_replace":
            raw, old, new = call.arg("path"), call.arg("old"), call.arg("new")
            path = resolve(raw, wd, self.home)
            facts.writes.append(WriteOp(path, raw, "edit", "str_replace", origin, f"str_replace {raw}", new, old))
            self._written(facts, path, new, origin, 0)
            self._literals(facts, new, origin)
        return facts

    # --- shell -------------------------------------------------------------------------------
    def _shell(self, facts: CallFacts, text: str, cwd: str, origin: tuple[str, ...], depth: int,
               executed: bool = True) -> None:
        if depth > MAX_DEPTH:
            facts.unparseable.append(f"nesting deeper than {MAX_DEPTH}: {text[:80]}")
            return
        self._note_decoded_exec(facts, text, origin, executed)
        script = self.parser.parse(text, cwd, self.home, origin)
        facts.params.extend(script.params)
        facts.functions.extend(script.functions)
        facts.unparseable.extend(script.unparseable)
        facts.decoded.extend(script.decoded)
        for cmd in script.cmds:
            self._command(facts, cmd, depth, executed)

    def _note_decoded_exec(self, facts: CallFacts, text: str, origin: tuple[str, ...], executed: bool) -> None:
        if not executed:
            return
        stripped = text.strip()
        if stripped and any(stripped == d.strip() or (len(d.strip()) > 8 and d.strip() in stripped)
                            for _, d in facts.decoded):
            facts.decode_exec.append(f"{' > '.join(origin)}: {stripped[:120]}")

    def _command(self, facts: CallFacts, cmd: Cmd, depth: int, executed: bool) -> None:
        facts.cmds.append(cmd)
        self._redirects(facts, cmd, depth)
        if not cmd.words:
            return
        words = list(cmd.words)
        name = cmd.name
        args = words[1:]
        origin = cmd.origin
        for w in words:
            for m in _DEV_TCP.finditer(w.text):
                facts.net.append(NetUse(m.group(2), "socket", name, origin, w.src))
        inner = self._unwrap(name, args)
        if inner is not None:
            if inner:
                sub = Cmd(words=tuple(inner), cwd=cmd.cwd, origin=origin + (name,), span=cmd.span,
                          stdin_text=cmd.stdin_text, stdin_piped=cmd.stdin_piped, pipe_next=cmd.pipe_next)
                self._command(facts, sub, depth, executed)
            elif name == "env":
                facts.env_reads.append(EnvRead("*", "env", origin, cmd.span))
            return
        if name == "xargs":
            self._xargs(facts, cmd, args, depth, executed)
            return
        if name in SHELLS or (name == "busybox" and args and args[0].text in SHELLS):
            self._nested_shell(facts, cmd, args[1:] if name == "busybox" else args, depth)
            return
        if name in ("su", "runuser") and _option_values(args, {"-c", "--command"}):
            for script in _option_values(args, {"-c", "--command"}):
                self._shell(facts, script.text, cmd.cwd, origin + (name + " -c",), depth + 1)
            return
        if name == "eval":
            text = " ".join(w.text for w in args)
            if OPAQUE in text:
                facts.dynamic_exec.append(f"eval {cmd.span[:120]}")
            self._shell(facts, text.replace(OPAQUE, ""), cmd.cwd, origin + ("eval",), depth + 1)
            return
        if name == "watch":
            pos = _positionals(args, {"-n", "--interval", "-d"})
            if pos:
                self._shell(facts, " ".join(w.text for w in pos), cmd.cwd, origin + ("watch",), depth + 1)
            return
        if _PYTHON.match(name):
            self._python_cmd(facts, cmd, args, depth)
            return
        if name in INLINE_INTERPRETERS:
            if self._inline_cmd(facts, cmd, name, args, depth):
                return
        if name in INSTALL_MANAGERS:
            self._install(facts, cmd, name, args)
            if name in ("pip", "pip3", "npm", "yarn", "pnpm", "apt", "apt-get", "uv", "gem", "cargo", "go"):
                return
        if name in FETCH_CMDS:
            self._fetch(facts, cmd, name, args)
            return
        if name in SOCKET_CMDS or name in ("scp", "rsync", "openssl"):
            self._socket(facts, cmd, name, args)
            if name in SOCKET_CMDS:
                return
        if name == "git":
            self._git(facts, cmd, args)
            return
        if name == "find":
            self._find(facts, cmd, args, depth, executed)
            return
        if name in SERVE_CMDS or name in ("http.server",):
            self._serve_cmd(facts, cmd, name, args)
        self._file_semantics(facts, cmd, name, args)

    def _redirects(self, facts: CallFacts, cmd: Cmd, depth: int) -> None:
        for r in cmd.redirects:
            if r.target is None:
                continue
            raw = r.target.text
            if raw in ("/dev/null", "/dev/stdout", "/dev/stderr", "/dev/tty") or raw.startswith("/dev/fd/") \
                    or raw.isdigit() or raw == "-":
                continue
            path = resolve(raw, cmd.cwd, self.home)
            if r.writes:
                content = static_step(cmd, cmd.stdin_text, []) if cmd.words else None
                op = "append" if r.op in (">>", "&>>") else "write"
                facts.writes.append(WriteOp(path, raw, op, cmd.name or "redirect", cmd.origin,
                                            f"{cmd.span[:160]}", content))
                if content is not None:
                    self._written(facts, path, content, cmd.origin + ("redirect",), depth)
            elif r.op in ("<", "<>"):
                facts.accesses.append(Access("read", path, raw, cmd.name or "<", cmd.origin, cmd.span[:160]))

    def _unwrap(self, name: str, args: list[Word]) -> list[Word] | None:
        """The wrapped command of ``sudo``/``timeout``/``env``/``nice``/…; None if not a wrapper."""
        if name == "env":
            rest = list(args)
            while rest and (rest[0].text.startswith("-") or "=" in rest[0].text):
                if rest[0].text in ("-u", "--unset", "-C", "--chdir", "-S", "--split-string"):
                    if rest[0].text in ("-S", "--split-string") and len(rest) > 1:
                        return [Word(t, t) for t in rest[1].text.split()] + rest[2:]
                    rest = rest[2:]
                else:
                    rest = rest[1:]
            return rest
        if name not in _WRAPPER_OPTS_WITH_VALUE:
            return None
        with_value = _WRAPPER_OPTS_WITH_VALUE[name]
        rest = list(args)
        while rest and rest[0].text.startswith("-") and rest[0].text != "-":
            rest = rest[2:] if rest[0].text in with_value else rest[1:]
        if name == "timeout" and rest:
            rest = rest[1:]  # the duration
        if name == "chroot" and rest:
            rest = rest[1:]  # the new root
        if name == "flock" and rest:
            rest = rest[1:]  # the lock file
        if name in ("nice", "ionice") and rest and re.fullmatch(r"-?\d+", rest[0].text):
            rest = rest[1:]
        if name in ("sudo", "doas", "runuser") and rest and "=" in rest[0].text:
            while rest and "=" in rest[0].text:
                rest = rest[1:]
        return rest

    def _xargs(self, facts: CallFacts, cmd: Cmd, args: list[Word], depth: int, executed: bool) -> None:
        rest = list(args)
        replace = None
        while rest and rest[0].text.startswith("-"):
            opt = rest[0].text
            if opt in ("-I", "--replace", "-i") and len(rest) > 1:
                replace = rest[1].text
            rest = rest[2:] if opt in _XARGS_OPTS_WITH_VALUE and len(rest) > 1 else rest[1:]
        if not rest:
            rest = [Word("echo", "echo")]
        # Unknown piped items come from the previous stage, whose own reads are checked already.
        items = cmd.stdin_text.split() if cmd.stdin_text else []
        if replace:
            words = [Word(w.text.replace(replace, items[0] if items else OPAQUE), w.src) for w in rest]
        else:
            words = rest + [Word(i, i) for i in items[:16]]
        sub = Cmd(words=tuple(words), cwd=cmd.cwd, origin=cmd.origin + ("xargs",), span=cmd.span)
        self._command(facts, sub, depth, executed)

    def _nested_shell(self, facts: CallFacts, cmd: Cmd, args: list[Word], depth: int) -> None:
        scripts = _option_values(args, {"-c"})
        name = cmd.name
        if scripts:
            for s in scripts:
                if OPAQUE in s.text:
                    facts.dynamic_exec.append(f"{name} -c {s.src[:120]}")
                self._shell(facts, s.text.replace(OPAQUE, ""), cmd.cwd, cmd.origin + (f"{name} -c",), depth + 1)
            return
        pos = _positionals(args, {"-o", "-O", "+O", "--rcfile", "--init-file"})
        if pos and pos[0].text not in ("-", "-s"):
            raw = pos[0].text
            facts.accesses.append(Access("arg", resolve(raw, cmd.cwd, self.home), raw, name, cmd.origin, cmd.span))
            return
        if cmd.stdin_text is not None:
            self._shell(facts, cmd.stdin_text, cmd.cwd, cmd.origin + (f"{name} <stdin",), depth + 1)
        elif cmd.stdin_piped:
            facts.dynamic_exec.append(f"unknown text piped into {name}: {cmd.span[:120]}")

    # --- python and other interpreters ----------------------------------------------------------
    def _python_cmd(self, facts: CallFacts, cmd: Cmd, args: list[Word], depth: int) -> None:
        name = cmd.name
        i = 0
        while i < len(args):
            t = args[i].text
            if t == "-c" and i + 1 < len(args):
                code = args[i + 1].text
                self._python_code(facts, code, cmd.cwd, cmd.origin + (f"{name} -c",), depth, None, True, cmd.span)
                rest = args[i + 2:]
                break
            if t.startswith("-c") and len(t) > 2:
                self._python_code(facts, t[2:], cmd.cwd, cmd.origin + (f"{name} -c",), depth, None, True, cmd.span)
                rest = args[i + 1:]
                break
            if t == "-m" and i + 1 < len(args):
                self._python_module(facts, cmd, args[i + 1].text, args[i + 2:], depth)
                return
            if t in ("-W", "-X", "-Q") and i + 1 < len(args):
                i += 2
                continue
            if t.startswith("-") and t != "-":
                i += 1
                continue
            if t == "-":
                rest = args[i + 1:]
                self._python_stdin(facts, cmd, depth)
                break
            raw = t
            facts.accesses.append(Access("arg", resolve(raw, cmd.cwd, self.home), raw, name, cmd.origin, cmd.span))
            rest = args[i + 1:]
            break
        else:
            rest = []
            self._python_stdin(facts, cmd, depth)
        self._plain_args(facts, cmd, name, rest)

    def _python_stdin(self, facts: CallFacts, cmd: Cmd, depth: int) -> None:
        if cmd.stdin_text is not None:
            self._python_code(facts, cmd.stdin_text, cmd.cwd, cmd.origin + (f"{cmd.name} <stdin",), depth, None,
                              True, cmd.span)
        elif cmd.stdin_piped:
            facts.dynamic_exec.append(f"unknown text piped into {cmd.name}: {cmd.span[:120]}")

    def _python_module(self, facts: CallFacts, cmd: Cmd, module: str, rest: list[Word], depth: int) -> None:
        if module in ("http.server", "SimpleHTTPServer", "uvicorn", "twisted"):
            self._serve_cmd(facts, cmd, "http.server", rest)
            return
        if module == "pip":
            self._install(facts, cmd, "pip", rest)
            return
        if module in ("base64",) and any(w.text in ("-d", "--decode") for w in rest):
            return
        self._plain_args(facts, cmd, f"python -m {module}", rest)

    def _python_code(self, facts: CallFacts, code: str, cwd: str, origin: tuple[str, ...], depth: int,
                     path: str | None, executed: bool, evidence: str) -> None:
        if depth > MAX_DEPTH:
            facts.unparseable.append(f"nesting deeper than {MAX_DEPTH}: {code[:80]}")
            return
        self._note_decoded_exec(facts, code, origin, executed)
        py = analyse_python(code, cwd, self.home, executed)
        facts.code.append(CodeUnit(py, path, executed, origin, evidence[:200]))
        facts.decoded.extend(py.decoded)
        command = "python" if executed else "source"
        for p in py.reads:
            facts.accesses.append(Access("read", resolve(p, cwd, self.home), p, command, origin, f"open({p!r})"))
        for p, recursive in py.listings:
            facts.accesses.append(Access("search" if recursive else "list", resolve(p, cwd, self.home), p, command,
                                         origin, f"list({p!r})"))
        for src, dst in py.copies:
            facts.accesses.append(Access("copy", resolve(src, cwd, self.home), src, command, origin,
                                         f"copy({src!r}, {dst!r})"))
            facts.writes.append(WriteOp(resolve(dst, cwd, self.home), dst, "write", command, origin,
                                        f"copy({src!r}, {dst!r})"))
        for p, op, content in py.writes:
            target = resolve(p, cwd, self.home)
            facts.writes.append(WriteOp(target, p, op, command, origin, f"{op}({p!r})", content))
            if content and OPAQUE not in content:
                self._written(facts, target, content, origin, depth + 1)
        for s in py.strings:
            if not s or OPAQUE in s or len(s) >= 4096 or "\n" in s or not ("/" in s or s.startswith((".", "~"))):
                continue
            facts.accesses.append(Access("arg", resolve(s, cwd, self.home), s, command, origin, repr(s)[:160]))
            if " " in s:  # a command line or message built in code: its path-like words count too
                for tok in s.split():
                    if tok.startswith(("/", "~/", "./", "../")):
                        facts.accesses.append(Access("arg", resolve(tok, cwd, self.home), tok, command, origin,
                                                     repr(s)[:160]))
        for url in py.urls:
            facts.net.append(NetUse(url, "code" if py.network else "arg", command, origin, url))
        for host in py.hosts:
            facts.net.append(NetUse(host, "code", command, origin, host))
        for name in py.env_reads:
            facts.env_reads.append(EnvRead(name, command, origin, f"os.environ[{name!r}]" if name != "*" else
                                           "os.environ"))
        facts.dynamic_exec.extend(f"{' > '.join(origin)}: {d}" for d in py.dynamic_exec)
        if py.serves:
            facts.accesses.append(Access("serve", cwd, ".", command, origin, "http.server in code"))
        if executed or path is None:
            for text in py.shell:
                self._shell(facts, text, cwd, origin + ("os.system",), depth + 1)
            for argv in py.argvs:
                if argv:
                    sub = Cmd(words=tuple(Word(a, a) for a in argv), cwd=cwd, origin=origin + ("subprocess",),
                              span=" ".join(argv).replace(OPAQUE, "$?"))
                    self._note_decoded_exec(facts, " ".join(argv), origin, True)
                    self._command(facts, sub, depth + 1, True)
            for text in py.exec_code:
                self._python_code(facts, text, cwd, origin + ("exec",), depth + 1, None, True, evidence)
        else:
            for text in py.shell:
                self._shell(facts, text, cwd, origin + ("os.system",), depth + 1, executed=False)

    def _inline_cmd(self, facts: CallFacts, cmd: Cmd, name: str, args: list[Word], depth: int) -> bool:
        flags = INLINE_INTERPRETERS[name]
        codes = _option_values(args, set(flags)) if name != "deno" else (
            args[1:2] if args and args[0].text == "eval" else [])
        if name in ("ruby",) and any(w.text == "-run" for w in args):
            self._serve_cmd(facts, cmd, "ruby", args)
            return True
        if not codes:
            return False
        for code in codes:
            self._inline_code(facts, code.text, cmd.cwd, cmd.origin + (f"{name} -e",), depth, cmd.span)
        code_ids = {id(c) for c in codes}
        rest = [w for w in args if id(w) not in code_ids and w.text not in flags]
        if name == "perl":
            self._file_semantics(facts, cmd, name, rest)   # perl -pi -e '…' FILE edits FILE
        else:
            self._plain_args(facts, cmd, name, rest)
        return True

    def _inline_code(self, facts: CallFacts, code: str, cwd: str, origin: tuple[str, ...], depth: int,
                     evidence: str) -> None:
        """Non-Python inline code: string literals are checked as paths/URLs, env access and exec calls."""
        networked = bool(_NET_HINT.search(code))
        for m in _STRING_LITERAL.finditer(code):
            s = m.group(2)
            if not s or "\n" in s:
                continue
            if _URL_RE.match(s):
                facts.net.append(NetUse(s, "code" if networked else "arg", origin[-1], origin, s))
            elif "/" in s or s.startswith((".", "~")):
                facts.accesses.append(Access("arg", resolve(s, cwd, self.home), s, origin[-1], origin, repr(s)))
        for rx, _lang in _INLINE_ENV:
            for m in rx.finditer(code):
                names = [g for g in m.groups() if g]
                facts.env_reads.append(EnvRead(names[0] if names else "*", origin[-1], origin, m.group(0)))
        for m in _INLINE_EXEC.finditer(code):
            self._shell(facts, m.group(2), cwd, origin + ("exec",), depth + 1)
        for m in _INLINE_DYNAMIC_EXEC.finditer(code):
            facts.dynamic_exec.append(f"{' > '.join(origin)}: {m.group(0)[:120]}")
        for m in _BACKTICK_EXEC.finditer(code):
            if "${" not in m.group(1):
                self._shell(facts, m.group(1), cwd, origin + ("backticks",), depth + 1)

    # --- written files ---------------------------------------------------------------------------
    def _written(self, facts: CallFacts, path: str, content: str, origin: tuple[str, ...], depth: int) -> None:
        """Analyse text written to ``path`` as the code it will become."""
        if not content:
            return
        base = _basename(path)
        first = content.lstrip().split("\n", 1)[0]
        cwd = posixpath.dirname(path) or self.ctx.workdir
        if base.endswith((".py", ".pyw", ".pyi")) or (first.startswith("#!") and "python" in first):
            self._python_code(facts, content, cwd, origin + ("written",), depth + 1, path, False, f"{base}")
        elif base.endswith((".sh", ".bash", ".zsh")) or (first.startswith("#!") and re.search(r"\b(ba|z|da)?sh\b", first)):
            self._shell(facts, content, self.ctx.workdir, origin + ("written",), depth + 1, executed=False)
        elif base.endswith((".js", ".mjs", ".cjs", ".ts", ".rb", ".pl", ".php")):
            self._inline_code(facts, content, cwd, origin + ("written",), depth + 1, base)

    def _literals(self, facts: CallFacts, text: str, origin: tuple[str, ...]) -> None:
        """Base64 literals anywhere in the call, decoded and analysed as if they were run."""
        if not text or not _DECODER_HINT.search(text):
            return
        candidates = [b64_text(m.group(0)) for m in _B64_LITERAL.finditer(text)]
        for m in _HEX_LITERAL.finditer(text):
            try:
                candidates.append(printable_text(bytes.fromhex(m.group(0))))
            except ValueError:
                pass
        for decoded in candidates:
            if decoded and (" " in decoded or "/" in decoded) and decoded not in facts.payloads:
                facts.payloads.append(decoded)
                facts.decoded.append(("base64", decoded))
                sub = CallFacts(tool=facts.tool)
                self._shell(sub, decoded, self.ctx.workdir, origin + ("base64 literal",), 1)
                self._python_code(sub, decoded, self.ctx.workdir, origin + ("base64 literal",), 1, None, True,
                                  decoded[:120])
                _merge(facts, sub)

    # --- command families ------------------------------------------------------------------------
    def _install(self, facts: CallFacts, cmd: Cmd, manager: str, args: list[Word]) -> None:
        words = list(args)
        if manager in ("uv",) and words and words[0].text == "pip":
            words = words[1:]
        if manager == "pipx" and words and words[0].text == "run":
            words = words[1:]
        if not words:
            return
        sub = words[0].text
        if sub not in _INSTALL_VERBS.get(manager, {"install", "add"}):
            return
        rest = words[1:]
        if manager in ("pip", "pip3", "uv", "pipx", "easy_install"):
            for w in _option_values(rest, {"-i", "--index-url", "--extra-index-url", "-f", "--find-links"}):
                facts.installs.append(Install(manager, w.text, "index", cmd.origin, cmd.span))
                facts.net.append(NetUse(w.text, "fetch", manager, cmd.origin, cmd.span))
            for w in _option_values(rest, {"-e", "--editable"}):
                kind = "url" if _URL_RE.match(w.text) or w.text.startswith("git+") else "local"
                facts.installs.append(Install(manager, w.text, kind, cmd.origin, cmd.span))
            for w in _option_values(rest, {"-r", "--requirement", "-c", "--constraint"}):
                facts.accesses.append(Access("read", resolve(w.text, cmd.cwd, self.home), w.text, manager,
                                             cmd.origin, cmd.span))
            positional = _positionals(rest, _PIP_OPTS_WITH_VALUE)
        elif manager in ("apt", "apt-get", "aptitude", "yum", "dnf"):
            positional = _positionals(rest, {"-o", "-t", "--target-release"})
        else:
            positional = _positionals(rest, {"--registry", "-g", "--prefix", "--save-prefix"})
        for w in positional:
            spec = w.text
            if _URL_RE.match(spec) or spec.startswith(("git+", "hg+", "svn+", "bzr+")) or "@" in spec and "://" in spec:
                kind = "url"
                facts.net.append(NetUse(re.sub(r"^\w+\+", "", spec.split("@", 1)[-1] if " @ " in spec else spec),
                                        "fetch", manager, cmd.origin, cmd.span))
            elif spec.startswith((".", "/", "~")) or spec.endswith((".whl", ".tar.gz", ".zip")) and "/" in spec:
                kind = "local"
            else:
                kind = "package"
            facts.installs.append(Install(manager, spec, kind, cmd.origin, cmd.span))

    def _fetch(self, facts: CallFacts, cmd: Cmd, name: str, args: list[Word]) -> None:
        with_value = _WGET_OPTS_WITH_VALUE if name.startswith("wget") else _CURL_OPTS_WITH_VALUE
        for w in _positionals(args, with_value):
            target = w.text
            if target.lower().startswith("file://"):
                local = target[7:]
                facts.accesses.append(Access("read", resolve(local, cmd.cwd, self.home), local, name, cmd.origin,
                                             cmd.span))
                continue
            if _URL_RE.match(target) or _HOSTISH.match(target) or OPAQUE in target:
                facts.net.append(NetUse(target, "fetch", name, cmd.origin, cmd.span))
        for w in _option_values(args, {"--url"}):
            facts.net.append(NetUse(w.text, "fetch", name, cmd.origin, cmd.span))
        for w in _option_values(args, {"-x", "--proxy", "--preproxy", "--socks5", "--socks5-hostname", "--socks4"}):
            facts.net.append(NetUse(w.text, "proxy", name, cmd.origin, cmd.span))
        for w in _option_values(args, {"--resolve", "--connect-to"}):
            parts = w.text.split(":")
            if parts and parts[-1]:
                facts.net.append(NetUse(parts[-1], "proxy", name, cmd.origin, cmd.span))
        outs = _option_values(args, {"-O", "--output-document"} if name.startswith("wget") else {"-o", "--output"})
        for w in outs:
            if w.text not in ("-", "/dev/null"):
                facts.writes.append(WriteOp(resolve(w.text, cmd.cwd, self.home), w.text, "write", name, cmd.origin,
                                            cmd.span))
        uploads = _option_values(args, {"-T", "--upload-file", "--post-file", "--body-file", "-K", "--config",
                                        "-i", "--input-file"})
        for w in _option_values(args, {"-d", "--data", "--data-binary", "--data-raw", "--data-urlencode",
                                       "-F", "--form", "--json"}):
            m = re.search(r"@([^;,\s]+)", w.text)
            if m:
                uploads.append(Word(m.group(1), w.src))
        for w in uploads:
            facts.accesses.append(Access("copy", resolve(w.text, cmd.cwd, self.home), w.text, name, cmd.origin,
                                         cmd.span))

    def _socket(self, facts: CallFacts, cmd: Cmd, name: str, args: list[Word]) -> None:
        texts = [w.text for w in args]
        if name in ("nc", "ncat", "netcat") and any(t.startswith("-") and "l" in t[1:] for t in texts):
            return  # listening locally
        if name == "openssl":
            for w in _option_values(args, {"-connect"}):
                facts.net.append(NetUse(w.text, "socket", name, cmd.origin, cmd.span))
            return
        if name == "socat":
            for t in texts:
                m = re.match(r"(?i)(?:tcp|udp|tcp4|tcp6|ssl|openssl|udp4)[^:]*:([^:,]+)", t)
                if m:
                    facts.net.append(NetUse(m.group(1), "socket", name, cmd.origin, cmd.span))
            return
        if name in ("scp", "rsync", "sftp"):
            for t in texts:
                m = re.match(r"^(?:[^@/\s]+@)?([A-Za-z0-9.-]+):(?!//)", t) or re.match(r"^rsync://([^/]+)", t)
                if m and not t.startswith("/"):
                    facts.net.append(NetUse(m.group(1), "socket", name, cmd.origin, cmd.span))
            return
        pos = _positionals(args, {"-p", "-i", "-l", "-o", "-F", "-J", "-L", "-R", "-D", "-c", "-w", "-W", "-s",
                                  "-e", "-b", "-t", "-q", "-x", "-X", "-T", "-I", "-m", "-O"})
        if pos:
            host = pos[0].text.split("@", 1)[-1]
            facts.net.append(NetUse(host, "socket", name, cmd.origin, cmd.span))

    def _git(self, facts: CallFacts, cmd: Cmd, args: list[Word]) -> None:
        sub_idx = 0
        while sub_idx < len(args) and args[sub_idx].text.startswith("-"):
            opt = args[sub_idx].text
            if opt in ("-C", "--git-dir", "--work-tree") and sub_idx + 1 < len(args):
                target = args[sub_idx + 1].text
                facts.accesses.append(Access("list", resolve(target, cmd.cwd, self.home), target, "git", cmd.origin,
                                             cmd.span))
            sub_idx += 2 if opt in ("-C", "-c", "--git-dir", "--work-tree", "--namespace") else 1
        if sub_idx >= len(args):
            return
        sub = args[sub_idx].text
        rest = args[sub_idx + 1:]
        if sub in ("clone", "fetch", "pull", "ls-remote", "submodule", "remote", "push"):
            for w in rest:
                t = w.text
                if _URL_RE.match(t) or re.match(r"^[\w.-]+@[\w.-]+:", t):
                    host_target = t if _URL_RE.match(t) else "ssh://" + t.replace(":", "/", 1)
                    facts.net.append(NetUse(host_target, "fetch", "git", cmd.origin, cmd.span))
        if sub == "clone":
            return
        if sub in ("show", "cat-file", "blame", "log", "diff", "grep") and rest:
            for w in rest:
                if ":" in w.text and not w.text.startswith("-") and not _URL_RE.match(w.text):
                    path = w.text.split(":", 1)[1]
                    if path:
                        facts.accesses.append(Access("read", resolve(path, cmd.cwd, self.home), path, "git",
                                                     cmd.origin, cmd.span))
        if sub in ("checkout", "restore") or (sub == "reset" and _has_flag(rest, long=("--hard",))):
            paths = [w for w in rest if not w.text.startswith("-")]
            if "--" in [w.text for w in rest]:
                paths = rest[[w.text for w in rest].index("--") + 1:]
            elif sub == "checkout" and paths:
                paths = paths[1:] if len(paths) > 1 else paths
            if sub == "reset":
                paths = [Word(".", ".")]
            for w in paths:
                facts.writes.append(WriteOp(resolve(w.text, cmd.cwd, self.home), w.text, "revert", "git", cmd.origin,
                                            cmd.span))
        if sub in ("rm", "mv"):
            for w in _positionals(rest):
                facts.writes.append(WriteOp(resolve(w.text, cmd.cwd, self.home), w.text, "delete", "git",
                                            cmd.origin, cmd.span))
        if sub == "stash" and (not rest or rest[0].text in ("push", "save", "-u", "--include-untracked")):
            facts.writes.append(WriteOp(cmd.cwd, ".", "revert", "git", cmd.origin, cmd.span))

    def _find(self, facts: CallFacts, cmd: Cmd, args: list[Word], depth: int, executed: bool) -> None:
        roots: list[Word] = []
        i = 0
        while i < len(args) and args[i].text in ("-H", "-L", "-P", "-O0", "-O1", "-O2", "-O3", "-D"):
            i += 2 if args[i].text == "-D" else 1
        while i < len(args) and not args[i].text.startswith(("-", "(", "!", ")")):
            roots.append(args[i])
            i += 1
        if not roots:
            roots = [Word(".", ".")]
        expr = args[i:]
        names: list[str] = []
        j = 0
        while j < len(expr):
            t = expr[j].text
            if t in ("-name", "-iname", "-path", "-ipath", "-wholename", "-iwholename", "-regex", "-iregex",
                     "-lname", "-ilname") and j + 1 < len(expr):
                negated = j > 0 and expr[j - 1].text in ("!", "-not")
                kind = "path" if t in ("-path", "-ipath", "-wholename", "-iwholename") else "name"
                if not negated:
                    names.append((kind, expr[j + 1].text))
                j += 2
                continue
            if t in ("-exec", "-execdir", "-ok", "-okdir"):
                k = j + 1
                inner: list[Word] = []
                while k < len(expr) and expr[k].text not in (";", "+", "\\;"):
                    inner.append(expr[k])
                    k += 1
                if inner:
                    found = [f"{r.text.rstrip('/')}/**/{n.split('/')[-1] if not n.startswith('.*') else '*'}"
                             for r in roots for _, n in (names or [("name", "*")])]
                    replaced = [Word(w.text.replace("{}", found[0]), w.src) for w in inner]
                    sub = Cmd(words=tuple(replaced), cwd=cmd.cwd, origin=cmd.origin + ("find -exec",), span=cmd.span)
                    self._command(facts, sub, depth + 1, executed)
                j = k + 1
                continue
            if t == "-delete":
                for r in roots:
                    facts.writes.append(WriteOp(resolve(r.text, cmd.cwd, self.home), r.text, "delete", "find",
                                                cmd.origin, cmd.span))
            j += 1
        has_or = any(w.text in ("-o", "-or", ",") for w in expr)
        for r in roots:
            path = resolve(r.text, cmd.cwd, self.home)
            searched = path
            for kind, n in names:
                if kind == "path" and not has_or and n.startswith((r.text.rstrip("/") + "/", "/")):
                    # "-path ./examples/*" (ANDed) limits what find can print to that subtree
                    prefix = re.split(r"[*?\[]", n, maxsplit=1)[0].rsplit("/", 1)[0] or "/"
                    searched = resolve(prefix if not n.startswith("/") else prefix, cmd.cwd, self.home) \
                        if n.startswith("/") else resolve(posixpath.join(r.text, posixpath.relpath(
                            prefix, r.text.rstrip("/") or "/")), cmd.cwd, self.home)
            facts.accesses.append(Access("search", searched, r.text, "find", cmd.origin, cmd.span))
            for kind, n in names:
                if kind == "path":
                    pattern = resolve(n, cmd.cwd, self.home) if n.startswith(("/", ".")) else f"{path}/**/{n}"
                else:
                    pattern = f"{searched.rstrip('/')}/**/{n}"
                facts.accesses.append(Access("probe", pattern, n, "find", cmd.origin, cmd.span))

    def _serve_cmd(self, facts: CallFacts, cmd: Cmd, name: str, args: list[Word]) -> None:
        texts = [w.text for w in args]
        if name == "php" and "-S" not in texts:
            return
        if name == "busybox" and "httpd" not in texts:
            return
        if name == "npx" and not any(t in ("http-server", "serve", "live-server") for t in texts):
            return
        if name == "ruby" and "-run" not in texts:
            return
        dirs = _option_values(args, {"--directory", "-d", "-t", "-h", "--root", "--path", "-r"})
        if not dirs and name in ("http-server", "serve", "live-server", "npx", "miniserve", "darkhttpd",
                                 "simple-http-server", "ruby"):
            dirs = [w for w in _positionals(args, {"-p", "--port", "-a", "--address"})
                    if not w.text.isdigit() and w.text not in ("http-server", "serve", "live-server", "httpd")]
        if not dirs:
            dirs = [Word(".", ".")]
        for d in dirs:
            facts.accesses.append(Access("serve", resolve(d.text, cmd.cwd, self.home), d.text, name, cmd.origin,
                                         cmd.span))

    def _plain_args(self, facts: CallFacts, cmd: Cmd, name: str, args: list[Word]) -> None:
        """Arguments of a program whose semantics are unknown: any path-like word may be read."""
        for w in args:
            t = w.text
            if t.startswith("-"):
                if "=" in t:
                    t = t.split("=", 1)[1]
                else:
                    continue
            if not t or t == OPAQUE:
                continue
            if _URL_RE.match(t):
                facts.net.append(NetUse(t, "arg", name, cmd.origin, cmd.span))
                continue
            facts.accesses.append(Access("glob" if w.globbed else "arg", resolve(t, cmd.cwd, self.home), t, name,
                                         cmd.origin, cmd.span))

    def _file_semantics(self, facts: CallFacts, cmd: Cmd, name: str, args: list[Word]) -> None:
        """Reads, listings, copies and writes of the common file utilities."""
        origin, cwd = cmd.origin, cmd.cwd

        def res(w: Word) -> str:
            return resolve(w.text, cwd, self.home)

        def add(kind: str, w: Word, skip_hidden: bool = False) -> None:
            if w.text in ("-", ""):
                return
            facts.accesses.append(Access(kind, res(w), w.text, name, origin, cmd.span[:200], skip_hidden))

        def write(w: Word, op: str, content: str | None = None) -> None:
            facts.writes.append(WriteOp(res(w), w.text, op, name, origin, cmd.span[:200], content))

        texts = [w.text for w in args]
        if name in TEXT_ONLY_CMDS:
            for w in args:
                if w.globbed:
                    add("glob", w)
            if name in ("mkdir",):
                for w in _positionals(args, {"-m", "--mode"}):
                    write(w, "mkdir")
            return
        if name in ("[", "test"):
            for i, w in enumerate(args[:-1]):
                if re.fullmatch(r"-[edfrswxLhpSbcugkOGN]", w.text):
                    add("list", args[i + 1])
            return
        if name in ("cd", "pushd"):
            if args and args[0].text != "-":
                add("list", args[0])
            return
        if name in WRITE_CMDS:
            pos = _positionals(args, {"-s", "--size", "-r", "--reference", "-m", "--mode", "-t", "-d"})
            if name in ("chmod", "chown", "chgrp", "setfacl", "chattr") and pos:
                pos = pos[1:]
            for w in pos:
                write(w, WRITE_CMDS[name])
            return
        if name == "tee":
            for w in _positionals(args):
                write(w, "append" if _has_flag(args, "a", ("--append",)) else "write", cmd.stdin_text)
            return
        if name == "dd":
            for t, w in zip(texts, args):
                if t.startswith("if="):
                    add("read", Word(t[3:], w.src))
                elif t.startswith("of="):
                    write(Word(t[3:], w.src), "write")
            return
        if name in ("cp", "mv", "install", "rsync", "ln", "scp"):
            self._copy_like(facts, cmd, name, args, add, write)
            return
        if name in ("tar", "zip", "7z", "7za", "cpio", "ar", "gzip", "bzip2", "xz", "zstd"):
            self._archive(facts, cmd, name, args, add, write)
            return
        if name in ("sed", "perl") and (_has_flag(args, "i", ("--in-place",)) or any(t.startswith("-i") for t in texts)):
            pos = _positionals(args, {"-e", "--expression", "-f", "--file"})
            scripts_given = bool(_option_values(args, {"-e", "--expression", "-f", "--file", "-pe", "-ne"}))
            targets = pos if scripts_given or name == "perl" else pos[1:]
            if name == "perl":
                targets = [w for w in pos if not w.text.startswith(("s/", "s|", "s#", "y/", "tr/"))]
            for w in targets:
                write(w, "edit")
            return
        if name in ("patch",):
            for w in _positionals(args, {"-p", "-i", "--input", "-d", "--directory", "-o", "-r", "-B", "-z"}):
                write(w, "edit")
            for w in _option_values(args, {"-i", "--input"}):
                add("read", w)
            return
        if name in LIST_CMDS:
            self._listing(facts, cmd, name, args, add)
            return
        if name in ("grep", "egrep", "fgrep", "zgrep", "rg", "ag", "ack"):
            self._search(facts, cmd, name, args, add)
            return
        if name in READ_CMDS:
            pos = _positionals(args, _VALUE_OPTS.get(name, frozenset()))
            if name in PATTERN_FIRST and pos and not _option_values(args, {"-e", "--expression", "-f", "--file",
                                                                            "--regexp"}):
                pos = pos[1:]
            for w in pos:
                add("glob" if w.globbed else "read", w)
            for w in _option_values(args, {"-f", "--file"}):
                add("read", w)
            return
        self._plain_args(facts, cmd, name, args)

    def _copy_like(self, facts: CallFacts, cmd: Cmd, name: str, args: list[Word], add, write) -> None:
        pos = _positionals(args, {"-t", "--target-directory", "-S", "--suffix", "-m", "--mode", "-o", "-g",
                                  "-e", "--rsh", "-P", "-i", "-F", "--exclude", "--include", "-l", "-c"})
        recursive = _has_flag(args, "rRa", ("--recursive", "--archive")) or name == "rsync"
        target_dir = _option_values(args, {"-t", "--target-directory"})
        if target_dir:
            sources, dest = pos, target_dir[0]
        elif name == "ln" and len(pos) == 1:
            sources, dest = pos, Word(_basename(pos[0].text.rstrip("/")) or ".", pos[0].src)
        else:
            sources, dest = pos[:-1], pos[-1] if pos else None
        kind = "link" if name == "ln" else "copy"
        for w in sources:
            if name in ("rsync", "scp") and re.match(r"^(?:[^@/\s]+@)?[A-Za-z0-9.-]+:", w.text):
                continue
            add("search" if recursive and kind == "copy" else kind, w)
            if kind == "copy" and not recursive:
                add("read", w)
            if name == "mv":
                write(w, "delete")
        if dest is not None and not (name in ("rsync", "scp") and re.match(r"^(?:[^@/\s]+@)?[A-Za-z0-9.-]+:", dest.text)):
            op = "link" if name == "ln" else "write"
            write(dest, op)
            for w in sources if not dest.text.startswith("/dev/") else ():
                write(Word(f"{dest.text.rstrip('/')}/{_basename(w.text.rstrip('/'))}", dest.src), op)

    def _archive(self, facts: CallFacts, cmd: Cmd, name: str, args: list[Word], add, write) -> None:
        texts = [w.text for w in args]
        first = texts[0] if texts else ""
        creating = name in ("zip", "gzip", "bzip2", "xz", "zstd") or (
            name == "tar" and (re.match(r"^-?[a-zA-Z]*c", first) or "--create" in texts)) or (
            name in ("7z", "7za") and first == "a") or (name == "ar" and "r" in first)
        if not creating:
            return
        pos = _positionals(args, {"-f", "--file", "-C", "--directory", "-x", "--exclude", "-T", "-X"})
        if name == "tar" and pos and not first.startswith("-") and "f" in first:
            pos = pos[2:]  # "czf out.tgz" bundles the archive name as the next word
        elif name in ("zip", "7z", "7za") and pos:
            pos = pos[1:] if name == "zip" else pos[2:]
        for w in pos:
            add("search", w)

    def _listing(self, facts: CallFacts, cmd: Cmd, name: str, args: list[Word], add) -> None:
        pos = _positionals(args, {"-I", "-P", "-L", "--ignore", "-d", "--max-depth", "-T", "--time-style",
                                  "--block-size", "-w", "--width", "--exclude", "-x", "-e", "-t", "--type", "-E"})
        recursive = name in ("tree", "fd", "fdfind") or (name in ("ls", "exa", "eza", "lsd") and
                                                         _has_flag(args, "R", ("--recursive",))) or \
            (name == "du" and _has_flag(args, "a", ("--all",)))
        if name in ("locate", "mlocate", "plocate"):
            for w in pos:
                facts.accesses.append(Access("probe", f"/**/*{w.text}*", w.text, name, cmd.origin, cmd.span))
            return
        if name in ("fd", "fdfind"):
            if pos:
                facts.accesses.append(Access("probe", f"{cmd.cwd}/**/*{pos[0].text}*", pos[0].text, name,
                                             cmd.origin, cmd.span))
                pos = pos[1:]
        if not pos:
            pos = [Word(".", ".")]
        shows_hidden = _has_flag(args, "aAH", ("--hidden", "--all", "--almost-all")) or name == "du"
        for w in pos:
            add("search" if recursive else ("glob" if w.globbed else "list"), w,
                skip_hidden=name in ("fd", "fdfind", "tree", "ls", "exa", "eza", "lsd") and not shows_hidden)

    def _search(self, facts: CallFacts, cmd: Cmd, name: str, args: list[Word], add) -> None:
        with_value = {"-e", "--regexp", "-f", "--file", "-m", "--max-count", "-A", "-B", "-C", "--context",
                      "--include", "--exclude", "--exclude-dir", "-g", "--glob", "-t", "--type", "-T",
                      "--type-not", "-d", "-D", "--color", "--colour", "-M", "--max-columns", "-j", "--threads",
                      "--label", "--max-depth", "--ignore-file", "-E", "--encoding", "--sort", "--sortr",
                      "--pre", "-r", "--replace"} if name in ("rg", "ag", "ack") else {
            "-e", "--regexp", "-f", "--file", "-m", "--max-count", "-A", "-B", "-C", "--context", "-d", "-D",
            "--directories", "--devices", "--label", "--binary-files", "--color", "--colour"}
        pos = _positionals(args, with_value)
        if not _option_values(args, {"-e", "--regexp", "-f", "--file"}) and pos:
            pos = pos[1:]
        for w in _option_values(args, {"-f", "--file"}):
            add("read", w)
        recursive = name in ("rg", "ag", "ack") or _has_flag(args, "rR", ("--recursive", "--dereference-recursive")) \
            or any(v.text == "recurse" for v in _option_values(args, {"-d", "--directories"}))
        skip_hidden = name in ("rg", "ag") and not _has_flag(args, "u", ("--hidden", "--unrestricted", "--no-ignore",
                                                                       "--all-types", "--skip-vcs-ignores"))
        if name == "rg" and _has_flag(args, "", ("-uu", "-uuu")):
            skip_hidden = False
        if recursive and not pos:
            pos = [Word(".", ".")]
        for w in pos:
            add("search" if recursive else ("glob" if w.globbed else "read"), w, skip_hidden=skip_hidden)


def _merge(into: CallFacts, sub: CallFacts) -> None:
    for name in ("cmds", "accesses", "writes", "net", "env_reads", "installs", "code", "params", "functions",
                 "decoded", "decode_exec", "dynamic_exec"):
        getattr(into, name).extend(getattr(sub, name))
