"""Shell text -> a flat list of simple commands the rules can inspect.

:class:`ShellParser` parses with ``bashlex`` (a real bash grammar) after a small pre-pass that
lifts out what bashlex cannot read: here-documents (their bodies are kept and attached to the
command that reads them), ``$((…))``/``((…))`` arithmetic, ``[[ … ]]`` tests and array literals.
When bashlex still fails, a conservative tokenizer splits the text on shell operators; the
result is marked *unparseable* so the rules always send it to the judge.

The walk keeps what a static reader can know:

* every simple command, wherever it sits (lists, pipelines, ``if``/``for``/``while`` bodies,
  functions, ``$(…)``, backticks, ``<(…)``), with the working directory at that point
  (``cd`` is followed), its redirections and its here-doc / here-string / piped-in text;
* variables assigned earlier in the same text are substituted; anything unknown becomes the
  :data:`~antihack.paths.OPAQUE` marker;
* the output of trivially static pipelines (``echo``/``printf``/here-strings through
  ``base64 -d``, ``rev``, ``xxd -r -p``, rot13 ``tr``) is computed, so ``$(echo … | base64 -d)``
  becomes the decoded text and ``… | base64 -d | bash`` hands the decoded script on.

Nested interpreters (``bash -c``, ``eval``, ``python -c``) are re-entered by
:mod:`antihack.facts`, not here.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import shlex
from collections import OrderedDict
from dataclasses import dataclass, field

import bashlex

from antihack.paths import GLOB_CHARS, OPAQUE, resolve

_HEREDOC_OP = re.compile(r"<<(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([^\s;&|<>()'\"]+))")
_HDOC_PLACEHOLDER = re.compile(r"^__HDOC(\d+)__$")
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]")
_ARRAY_START = re.compile(r"(?:^|[\s;&|(])[A-Za-z_][A-Za-z0-9_]*\+?=$")
_FALLBACK_SUBST = re.compile(r"\$\(((?:[^()]|\([^()]*\))*)\)|`([^`]*)`")
_FALLBACK_PARAM = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_QUOTED_SEGMENT = re.compile(r"'[^']*'|\"(?:[^\"\\]|\\.)*\"|\\.")
_OPERATOR_TOKEN = re.compile(r"^[;&|(){}]+$")
_REDIRECT_TOKEN = re.compile(r"^(\d*)(>>|>\||&>>|&>|>&|>|<<<|<>|<)$")
_ROT13_SETS = {("A-Za-z", "N-ZA-Mn-za-m"), ("a-zA-Z", "n-za-mN-ZA-M"), ("A-Z", "N-ZA-M"), ("a-z", "n-za-m")}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|u[0-9a-fA-F]{4}|0?[0-7]{1,3}|[nrtabfv\\'\"e])")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
                   "\\": "\\", "'": "'", '"': '"', "e": "\x1b"}

_PREPASS_NEEDED = re.compile(r"<<|\(\(|\[\[|\]\]|=\(")
# A single simple command: words of plain characters and balanced quotes, no expansions or operators.
_SIMPLE_CHUNK = r"""(?:[A-Za-z0-9_./:=@%+,~^*?\[\]{}!-]|'[^']*'|"[^"$`\\!]*")+"""
_SIMPLE_COMMAND = re.compile(r"\s*" + _SIMPLE_CHUNK + r"(?:\s+" + _SIMPLE_CHUNK + r")*\s*")
_SIMPLE_TOKEN = re.compile(r"""(?:[^\s'"]+|'[^']*'|"[^"]*")+""")
_BRACED_PARAM = re.compile(r"\$\{([^{}\n]*)\}")
_QUOTE_SEGMENTS = re.compile(r"""'[^']*'|"[^"]*"|[^'"]+""")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")

MAX_PARSE_CACHE = 8192


@dataclass(frozen=True)
class Word:
    """One shell word: ``text`` after quote removal and static expansion, ``src`` as written."""

    text: str
    src: str

    @property
    def opaque(self) -> bool:
        return OPAQUE in self.text

    @property
    def globbed(self) -> bool:
        """Does the shell expand a glob in this word (a glob character outside quotes)?"""
        if not (GLOB_CHARS & set(self.text)):
            return False
        return bool(GLOB_CHARS & set(_QUOTED_SEGMENT.sub("", self.src)))


@dataclass(frozen=True)
class Redirect:
    """``op`` is the bash operator (``>``, ``>>``, ``<``, ``&>``, ``<<<``) or ``<<`` for a here-doc."""

    op: str
    target: Word | None
    text: str | None = None

    @property
    def writes(self) -> bool:
        return self.op in (">", ">>", ">|", "&>", "&>>", ">&", "<>")


@dataclass
class Cmd:
    """A simple command as the shell would run it."""

    words: tuple[Word, ...]
    cwd: str
    origin: tuple[str, ...]
    span: str
    assigns: tuple[tuple[str, str], ...] = ()
    redirects: tuple[Redirect, ...] = ()
    stdin_text: str | None = None      # here-doc, here-string or statically known piped input
    stdin_piped: bool = False          # reads a pipe (its text may be unknown)
    pipe_next: str | None = None       # the command this one pipes into

    @property
    def argv(self) -> list[str]:
        return [w.text for w in self.words]

    @property
    def name(self) -> str:
        if not self.words:
            return ""
        return self.words[0].text.rsplit("/", 1)[-1]


@dataclass
class ShellScript:
    """Everything one shell text statically runs."""

    cmds: list[Cmd] = field(default_factory=list)
    params: list[tuple[str, str]] = field(default_factory=list)      # (expansion, word as written)
    functions: list[str] = field(default_factory=list)
    unparseable: list[str] = field(default_factory=list)
    decoded: list[tuple[str, str]] = field(default_factory=list)     # (how, text) of static decodes


@dataclass
class _Env:
    cwd: str
    vars: dict[str, str]

    def copy(self) -> "_Env":
        return _Env(self.cwd, dict(self.vars))


def decode_escapes(text: str) -> str:
    """Interpret ``\\n``, ``\\xHH``, octal and ``\\uHHHH`` escapes (echo -e, printf, $'…')."""
    def sub(m: re.Match) -> str:
        esc = m.group(1)
        if esc[0] == "x":
            return chr(int(esc[1:], 16))
        if esc[0] == "u":
            return chr(int(esc[1:], 16))
        if esc[0].isdigit():
            return chr(int(esc, 8) & 0xFF)
        return _SIMPLE_ESCAPES.get(esc, esc)
    return _ESCAPE.sub(sub, text)


def b64_text(data: str) -> str | None:
    """Decode base64 (standard or URL-safe, padding optional) to text; None if it is not text."""
    compact = re.sub(r"\s+", "", data)
    if len(compact) < 4 or not re.fullmatch(r"[A-Za-z0-9+/=_-]+", compact):
        return None
    compact = compact.rstrip("=")
    compact += "=" * (-len(compact) % 4)
    try:
        raw = base64.b64decode(compact.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return printable_text(raw)


def printable_text(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    good = sum(1 for c in text if c.isprintable() or c in "\n\t\r")
    return text if good / len(text) >= 0.9 else None


def _printf(fmt: str, values: list[str]) -> str:
    fmt = decode_escapes(fmt)
    if "%" not in fmt:
        return fmt
    out: list[str] = []
    vals = list(values)
    pieces = re.split(r"(%[-+ #0-9.]*[sdbqcxXfgeiu%])", fmt)
    for piece in pieces:
        if re.fullmatch(r"%[-+ #0-9.]*[sdbqcxXfgeiu%]", piece):
            if piece == "%%":
                out.append("%")
            else:
                v = vals.pop(0) if vals else ""
                out.append(decode_escapes(v) if piece.endswith("b") else v)
        else:
            out.append(piece)
    return "".join(out)


def static_step(cmd: Cmd, stdin: str | None, decoded: list[tuple[str, str]]) -> str | None:
    """The stdout of ``cmd`` when it is a pure text transformer of known input, else None."""
    argv = cmd.argv
    if not argv or any(OPAQUE in a for a in argv):
        return None
    name, args = cmd.name, argv[1:]
    files = [a for a in args if not a.startswith("-")]
    if name == "echo":
        newline, escapes = True, False
        while args and re.fullmatch(r"-[neE]+", args[0]):
            newline &= "n" not in args[0]
            escapes = "e" in args[0] or (escapes and "E" not in args[0])
            args = args[1:]
        text = " ".join(args)
        return (decode_escapes(text) if escapes else text) + ("\n" if newline else "")
    if name == "printf":
        return _printf(args[0], args[1:]) if args else None
    if name == "cat" and not files:
        return stdin
    if stdin is None:
        return None
    if name in ("base64", "b64", "basenc") and any(a in ("-d", "--decode", "-D", "-di", "-id") for a in args) \
            and not files:
        text = b64_text(stdin)
        if text is not None:
            decoded.append(("base64", text))
        return text
    if name == "openssl" and "base64" in args and "-d" in args:
        text = b64_text(stdin)
        if text is not None:
            decoded.append(("base64", text))
        return text
    if name == "rev" and not files:
        text = "\n".join(line[::-1] for line in stdin.rstrip("\n").split("\n")) + "\n"
        decoded.append(("rev", text))
        return text
    if name == "xxd" and "-r" in args and ("-p" in args or "-ps" in args):
        try:
            text = printable_text(binascii.unhexlify(re.sub(r"\s+", "", stdin)))
        except (binascii.Error, ValueError):
            return None
        if text is not None:
            decoded.append(("hex", text))
        return text
    if name == "tr" and len(files) == 2 and (files[0], files[1]) in _ROT13_SETS:
        text = codecs.decode(stdin, "rot13")
        decoded.append(("rot13", text))
        return text
    return None


def _match_parens(text: str, start: int) -> int:
    """Index just past the ``)`` matching the ``(`` at ``start`` (or -1)."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def prepass(text: str) -> tuple[str, list[str]]:
    """Rewrite what bashlex cannot parse; return the new text and the here-doc bodies.

    A here-doc operator becomes ``< __HDOC<n>__`` and its body is removed from the text.
    """
    if not _PREPASS_NEEDED.search(text):
        return text, []
    out: list[str] = []
    docs: list[str] = []
    pending: list[tuple[int, str, bool]] = []
    i, n, quote = 0, len(text), ""
    while i < n:
        c = text[i]
        if quote == "'":
            out.append(c)
            quote = "" if c == "'" else quote
            i += 1
            continue
        if quote == '"':
            if c == "\\" and i + 1 < n:
                out.append(text[i:i + 2])
                i += 2
                continue
            out.append(c)
            quote = "" if c == '"' else quote
            i += 1
            continue
        if c == "\\" and i + 1 < n:
            out.append(text[i:i + 2])
            i += 2
            continue
        if c in "'\"":
            quote = c
            out.append(c)
            i += 1
            continue
        if c == "#" and (i == 0 or text[i - 1] in " \t\n;&|("):
            j = text.find("\n", i)
            j = n if j == -1 else j
            out.append(text[i:j])
            i = j
            continue
        if text.startswith("<<<", i):
            out.append("<<<")
            i += 3
            continue
        if text.startswith("<<", i):
            m = _HEREDOC_OP.match(text, i)
            if m:
                delim = next(g for g in (m.group(2), m.group(3), m.group(4)) if g is not None)
                pending.append((len(docs), delim, m.group(1) == "-"))
                out.append(f" < __HDOC{len(docs)}__ ")
                docs.append("")
                i = m.end()
                continue
        if c == "\n" and pending:
            out.append("\n")
            i += 1
            for idx, delim, strip_tabs in pending:
                body: list[str] = []
                while i < n:
                    j = text.find("\n", i)
                    line = text[i:] if j == -1 else text[i:j]
                    i = n if j == -1 else j + 1
                    if (line.lstrip("\t") if strip_tabs else line) == delim:
                        break
                    body.append(line)
                docs[idx] = "\n".join(body) + ("\n" if body else "")
            pending = []
            continue
        if text.startswith("$((", i):
            j = _match_parens(text, i + 1)
            if j != -1:
                out.append("0")
                i = j
                continue
        if text.startswith("((", i) and not "".join(out[-3:]).strip(" \t").endswith(("$", "<", ">")):
            j = _match_parens(text, i)
            if j != -1:
                out.append("true")
                i = j
                continue
        if text.startswith("[[", i) and i + 2 < n and text[i + 2] in " \t":
            out.append("[")
            i += 2
            continue
        if text.startswith("]]", i) and i > 0 and text[i - 1] in " \t":
            out.append("]")
            i += 2
            continue
        if c == "(" and _ARRAY_START.search("".join(out[-64:])):
            j = _match_parens(text, i)
            if j != -1:
                inner = text[i + 1:j - 1].replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
                out.append('"' + inner + '"')
                i = j
                continue
        out.append(c)
        i += 1
    return "".join(out), docs


def _bashlex_safe(text: str) -> bool:
    """bashlex loops forever on some malformed ``${`` expansions; such text takes the fallback path.

    Every ``${`` must close on the same line with quote-balanced content (``${X:-a}``, ``${#A}``).
    """
    start = text.find("${")
    while start != -1:
        m = _BRACED_PARAM.match(text, start)
        if m is None or m.group(1).count("'") % 2 or m.group(1).count('"') % 2:
            return False
        start = text.find("${", start + 2)
    return True


class ShellParser:
    """Parses shell text into :class:`ShellScript` objects; keeps a bounded cache of parse trees."""

    def __init__(self, cache_size: int = MAX_PARSE_CACHE) -> None:
        self._cache: OrderedDict[str, tuple[list | None, list[str], str]] = OrderedDict()
        self._cache_size = cache_size

    def _trees(self, text: str) -> tuple[list | None, list[str], str]:
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        prepped, docs = prepass(text)
        trees: list | None
        if not _bashlex_safe(prepped):
            trees = None
        else:
            try:
                trees = bashlex.parse(prepped) if prepped.strip() else []
            except Exception:  # noqa: BLE001 - bashlex raises many types; any failure means "unparseable"
                trees = None
        result = (trees, docs, prepped)
        self._cache[text] = result
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return result

    def parse(self, text: str, cwd: str, home: str, origin: tuple[str, ...] = ("bash",),
              variables: dict[str, str] | None = None, script: ShellScript | None = None) -> ShellScript:
        """Parse ``text`` run from ``cwd``; append to ``script`` when given (for nested shells)."""
        script = script if script is not None else ShellScript()
        if _SIMPLE_COMMAND.fullmatch(text):
            self._simple(text, cwd, origin, variables or {}, script)
            return script
        trees, docs, prepped = self._trees(text)
        walker = _Walker(self, prepped, docs, home, origin, script)
        env = _Env(cwd, dict(variables or {}))
        if trees is None:
            walker.fallback(prepped, env)
        else:
            for tree in trees:
                walker.walk(tree, env)
        return script


    def _simple(self, text: str, cwd: str, origin: tuple[str, ...], variables: dict[str, str],
                script: ShellScript) -> None:
        """Fast path for one plain command (no expansions, operators or redirections)."""
        words: list[Word] = []
        assigns: list[tuple[str, str]] = []
        for tok in _SIMPLE_TOKEN.findall(text):
            value = "".join(seg[1:-1] if seg[0] in "'\"" else seg for seg in _QUOTE_SEGMENTS.findall(tok)) \
                if ("'" in tok or '"' in tok) else tok
            if not words and _ASSIGNMENT.match(tok):
                name, _, val = value.partition("=")
                assigns.append((name.rstrip("+"), val))
                continue
            words.append(Word(value, tok))
        script.cmds.append(Cmd(words=tuple(words), cwd=cwd, origin=origin, span=text.strip(),
                               assigns=tuple(assigns)))


class _Walker:
    def __init__(self, parser: ShellParser, src: str, docs: list[str], home: str,
                 origin: tuple[str, ...], out: ShellScript) -> None:
        self.parser, self.src, self.docs, self.home = parser, src, docs, home
        self.origin, self.out = origin, out

    # --- nodes -------------------------------------------------------------------------------
    def walk(self, node, env: _Env) -> str | None:
        """Walk one bashlex node; return its stdout when it is statically known."""
        kind = node.kind
        if kind == "list":
            parts = [p for p in node.parts if p.kind != "operator"]
            last = None
            for p in parts:
                last = self.walk(p, env)
            return last if len(parts) == 1 else None
        if kind == "pipeline":
            return self._pipeline(node, env)
        if kind == "command":
            return self._command(node, env)[1]
        if kind == "compound":
            inner = env if node.list and getattr(node.list[0], "word", "") == "{" else env.copy()
            for p in node.list:
                if p.kind not in ("reservedword", "operator"):
                    self.walk(p, inner)
            for r in getattr(node, "redirects", []) or []:
                red = self._redirect(r, env)
                if red is not None:
                    self._emit(Cmd(words=(), cwd=env.cwd, origin=self.origin, span=self._span(r),
                                   redirects=(red,)))
            return None
        if kind == "for":
            self._for(node, env)
            return None
        if kind == "function":
            name = node.parts[0].word if node.parts and hasattr(node.parts[0], "word") else ""
            self.out.functions.append(name)
            for p in node.parts[1:]:
                if p.kind not in ("reservedword", "operator"):
                    self.walk(p, env.copy())
            return None
        for p in getattr(node, "parts", []) or []:
            if p.kind not in ("reservedword", "operator", "pipe"):
                self.walk(p, env)
        return None

    def _for(self, node, env: _Env) -> None:
        parts = node.parts
        var, items, body_start = None, [], len(parts)
        for idx, p in enumerate(parts):
            if p.kind == "reservedword" and p.word == "do":
                body_start = idx + 1
                break
            if p.kind == "word":
                if var is None:
                    var = p.word
                else:
                    items.append(self._word(p, env))
        if var:
            # A loop variable takes each item in turn; one item is substituted exactly, several
            # become a glob that covers them all only when they share a directory, else opaque.
            texts = [w.text for w in items]
            env.vars[var] = texts[0] if len(texts) == 1 else OPAQUE
            self._emit(Cmd(words=(Word("for", "for"),) + tuple(items), cwd=env.cwd, origin=self.origin,
                           span=self._span(node)))
        for p in parts[body_start:]:
            if p.kind not in ("reservedword", "operator"):
                self.walk(p, env)

    def _pipeline(self, node, env: _Env) -> str | None:
        stages = [p for p in node.parts if p.kind not in ("pipe", "reservedword")]
        prev_out: str | None = None
        prev_cmd: Cmd | None = None
        for idx, stage in enumerate(stages):
            sub = env.copy() if len(stages) > 1 else env
            if stage.kind == "command":
                cmd, out = self._command(stage, sub, stdin=prev_out, piped=idx > 0)
                if prev_cmd is not None:
                    prev_cmd.pipe_next = cmd.name
                prev_cmd, prev_out = cmd, out
            else:
                self.walk(stage, sub)
                prev_cmd, prev_out = None, None
        return prev_out

    def _command(self, node, env: _Env, stdin: str | None = None, piped: bool = False) -> tuple[Cmd, str | None]:
        words: list[Word] = []
        assigns: list[tuple[str, str]] = []
        redirects: list[Redirect] = []
        for p in node.parts:
            if p.kind == "assignment":
                w = self._word(p, env)
                name, _, value = w.text.partition("=")
                assigns.append((name.rstrip("+"), value))
            elif p.kind == "word":
                words.append(self._word(p, env))
            elif p.kind == "redirect":
                red = self._redirect(p, env)
                if red is not None:
                    redirects.append(red)
        if not words:
            for name, value in assigns:
                env.vars[name] = value
        elif words[0].text in ("export", "declare", "local", "readonly", "typeset"):
            for w in words[1:]:
                if "=" in w.text and not w.text.startswith("-"):
                    name, _, value = w.text.partition("=")
                    env.vars[name.rstrip("+")] = value
        stdin_text = stdin
        for red in redirects:
            if red.op in ("<<", "<<<"):
                stdin_text = red.text
        cmd = Cmd(words=tuple(words), cwd=env.cwd, origin=self.origin, span=self._span(node),
                  assigns=tuple(assigns), redirects=tuple(redirects), stdin_text=stdin_text,
                  stdin_piped=piped)
        self._emit(cmd)
        if words and words[0].text in ("cd", "pushd"):
            target = words[1].text if len(words) > 1 else self.home
            if target != "-" and OPAQUE not in target:
                env.cwd = resolve(target, env.cwd, self.home)
        return cmd, static_step(cmd, stdin_text, self.out.decoded)

    def _redirect(self, node, env: _Env) -> Redirect | None:
        target = getattr(node, "output", None)
        if target is None or isinstance(target, int) or not hasattr(target, "word"):
            return None
        word = self._word(target, env)
        m = _HDOC_PLACEHOLDER.match(word.text)
        if m and node.type == "<":
            return Redirect("<<", None, self._doc(int(m.group(1))))
        if node.type == "<<<":
            return Redirect("<<<", word, word.text + "\n")
        return Redirect(node.type, word)

    def _word(self, node, env: _Env) -> Word:
        text = node.word
        src = self._span(node)
        for part in getattr(node, "parts", []) or []:
            if part.kind == "parameter":
                text = self._param(text, part.value, src, env)
            elif part.kind in ("commandsubstitution", "processsubstitution"):
                sub_src = self.src[part.pos[0]:part.pos[1]]
                saved = self.origin
                self.origin = saved + ("$()" if part.kind == "commandsubstitution" else "<()",)
                try:
                    static = self.walk(part.command, env.copy())
                finally:
                    self.origin = saved
                if part.kind == "processsubstitution":
                    value = "/dev/fd/63"
                else:
                    value = static.rstrip("\n") if static is not None else OPAQUE
                text = text.replace(sub_src, value, 1) if sub_src in text else text + OPAQUE
        return Word(text, src)

    def _param(self, text: str, expansion: str, src: str, env: _Env) -> str:
        self.out.params.append((expansion, src))
        m = _PARAM_NAME.match(expansion.lstrip("!#"))
        name = m.group(0) if m else ""
        value = env.vars.get(name)
        if value is None and name == "HOME":
            value = self.home
        elif value is None and name == "PWD":
            value = env.cwd
        if value is None and ":-" in expansion:
            value = expansion.split(":-", 1)[1]
        if expansion.startswith(("!", "#")) or value is None:
            value = OPAQUE
        braced = "${" + expansion + "}"
        if braced in text:
            return text.replace(braced, value, 1)
        return re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m: value, text, count=1)

    def _doc(self, index: int) -> str:
        """Body of here-doc ``index`` ('' for a placeholder that did not come from this text's pre-pass)."""
        return self.docs[index] if 0 <= index < len(self.docs) else ""

    def _span(self, node) -> str:
        start, end = node.pos
        return self.src[start:end]

    def _emit(self, cmd: Cmd) -> None:
        self.out.cmds.append(cmd)

    # --- fallback ----------------------------------------------------------------------------
    def fallback(self, text: str, env: _Env) -> None:
        """Conservative split of text bashlex could not parse; marks it unparseable."""
        self.out.unparseable.append(text)
        for m in _FALLBACK_PARAM.finditer(text):
            self.out.params.append((m.group(1), m.group(0)))
        saved = self.origin
        self.origin = saved + ("unparsed",)
        try:
            for m in _FALLBACK_SUBST.finditer(text):
                inner = m.group(1) if m.group(1) is not None else m.group(2)
                if inner and inner.strip():
                    self.parser.parse(inner, env.cwd, self.home, self.origin + ("$()",), env.vars, self.out)
            for line in text.split("\n"):
                self._fallback_line(line, env)
        finally:
            self.origin = saved

    def _fallback_line(self, line: str, env: _Env) -> None:
        try:
            lex = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
            lex.whitespace_split = True
            lex.commenters = ""
            tokens = list(lex)
        except ValueError:
            tokens = re.findall(r"[^\s;&|()<>]+|[;&|()<>]+", line)
            tokens = [t.strip("'\"") for t in tokens]
        segment: list[str] = []
        redirects: list[Redirect] = []
        pending_redirect: str | None = None
        for tok in tokens + [";"]:
            if pending_redirect is not None:
                m = _HDOC_PLACEHOLDER.match(tok)
                if m and pending_redirect == "<":
                    redirects.append(Redirect("<<", None, self._doc(int(m.group(1)))))
                else:
                    redirects.append(Redirect(pending_redirect, Word(self._fallback_expand(tok, env), tok)))
                pending_redirect = None
                continue
            rm = _REDIRECT_TOKEN.match(tok)
            if rm:
                pending_redirect = rm.group(2)
                continue
            if _OPERATOR_TOKEN.match(tok):
                if segment or redirects:
                    words = tuple(Word(self._fallback_expand(t, env), t) for t in segment)
                    stdin = next((r.text for r in redirects if r.op in ("<<", "<<<")), None)
                    self._emit(Cmd(words=words, cwd=env.cwd, origin=self.origin, span=" ".join(segment),
                                   redirects=tuple(redirects), stdin_text=stdin))
                segment, redirects = [], []
                continue
            segment.append(tok)

    def _fallback_expand(self, token: str, env: _Env) -> str:
        def sub(m: re.Match) -> str:
            return env.vars.get(m.group(1), OPAQUE)
        token = _FALLBACK_SUBST.sub(OPAQUE, token)
        return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", sub, token)
