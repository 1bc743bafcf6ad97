"""Path resolution and glob-against-glob matching for the protected-path rules.

A path the agent names may itself be a glob (``cat /work/.e*/*``) or contain parts the guard
cannot know statically (``cat $DIR/x``: those parts are the :data:`OPAQUE` marker). A protected
pattern is a glob too. The question the rules ask is therefore "could some real path match both
globs?", which :func:`globs_intersect` answers exactly for ``*``/``?``/``**`` patterns (character
classes are widened to ``?``, which only adds recall).

Patterns are stored as tuples of components of an absolute path. ``**`` is a component that
matches any number (zero included) of components; a component holding :data:`OPAQUE` becomes
``**`` too, because an unknown expansion may contain slashes. ``*`` is allowed to match a
leading dot (bash would not), again for recall.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field

OPAQUE = "\x00"  # a part of a word whose value cannot be known statically
GLOB_CHARS = frozenset("*?[")

_Token = str  # "*", "?" or a single literal character
_BRACE_GROUP = re.compile(r"\{[^{}]*(?:,|\.\.)[^{}]*\}")


def home_for(workdir: str) -> str:
    """The home directory assumed for ``~``: ``/home/<user>`` when the work dir lives there, else ``/root``."""
    parts = workdir.strip("/").split("/")
    if len(parts) >= 2 and parts[0] == "home":
        return f"/home/{parts[1]}"
    return "/root"


def has_glob(text: str) -> bool:
    return any(c in GLOB_CHARS for c in text)


def resolve(path: str, cwd: str, home: str) -> str:
    """Absolute, normalised form of ``path`` seen from ``cwd`` (``~`` and ``..`` handled; globs kept)."""
    if not path:
        return cwd
    if "{" in path:
        path = _BRACE_GROUP.sub("*", path)  # brace expansion: any alternative may be meant
    if path.startswith(OPAQUE):
        return path  # unknown prefix: may be absolute or relative; components() makes it "**"
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    elif path.startswith("~"):
        user, _, rest = path[1:].partition("/")
        path = f"/home/{user}" + (f"/{rest}" if rest else "")
    if not path.startswith("/"):
        path = posixpath.join(cwd, path)
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


def components(path: str) -> tuple[str, ...]:
    """Components of a resolved path or pattern; opaque components become ``**``."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    out: list[str] = []
    for part in parts:
        comp = "**" if OPAQUE in part else part
        if comp == "**" and out and out[-1] == "**":
            continue
        out.append(comp)
    if path.startswith(OPAQUE) and (not out or out[0] != "**"):
        out.insert(0, "**")
    return tuple(out)


def _tokens(component: str) -> tuple[_Token, ...]:
    toks: list[_Token] = []
    i = 0
    while i < len(component):
        c = component[i]
        if c == "[":
            close = component.find("]", i + 2)
            if close != -1:
                toks.append("?")
                i = close + 1
                continue
        if c == "*":
            if not toks or toks[-1] != "*":
                toks.append("*")
        elif c == "?":
            toks.append("?")
        else:
            toks.append("\\" + c)  # literal, prefixed so it never equals "*" or "?"
        i += 1
    return tuple(toks)


def _sequences_intersect(a: tuple, b: tuple, star: str, pair_matches: Callable[[object, object], bool]) -> bool:
    """Is there a sequence matched by both token sequences `a` and `b`, where `star` matches any run of
    tokens and `pair_matches(x, y)` says whether two other tokens can match the same thing? (A search
    over position pairs of the two sequences' automata.)"""
    n, m = len(a), len(b)
    seen: set[tuple[int, int]] = set()
    stack = [(0, 0)]
    while stack:
        i, j = stack.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == n and j == m:
            return True
        if i < n and a[i] == star:
            stack.append((i + 1, j))
            if j < m:
                stack.append((i, j + 1))  # a's star consumes what b[j] matches (or b's star ends first)
            continue
        if j < m and b[j] == star:
            stack.append((i, j + 1))
            if i < n:
                stack.append((i + 1, j))
            continue
        if i < n and j < m and pair_matches(a[i], b[j]):
            stack.append((i + 1, j + 1))
    return False


def _component_intersects(a: tuple[_Token, ...], b: tuple[_Token, ...]) -> bool:
    """Is there a string matched by both single-component globs?"""
    return _sequences_intersect(a, b, "*", lambda x, y: x == "?" or y == "?" or x == y)


@dataclass
class GlobMatcher:
    """Matches resolved paths/globs against a fixed set of absolute patterns, with a result cache."""

    patterns: tuple[tuple[str, ...], ...]
    sources: tuple[str, ...]
    _comp_cache: dict[tuple[str, str, bool], bool] = field(default_factory=dict, repr=False)
    _tok_cache: dict[str, tuple[_Token, ...]] = field(default_factory=dict, repr=False)
    _cache: dict[tuple[str, str | None], str | None] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, patterns: tuple[str, ...], workdir: str, subtree: bool = True) -> "GlobMatcher":
        """Compile patterns; ``subtree`` makes every pattern also cover what lies beneath it."""
        comps: list[tuple[str, ...]] = []
        for pat in patterns:
            pat = pat.strip()
            if not pat:
                continue
            if "/" not in pat.rstrip("/"):
                c: tuple[str, ...] = ("**", pat.rstrip("/"))
            elif pat.startswith("/"):
                c = components(posixpath.normpath(pat))
            elif pat.startswith("**/"):
                c = components(pat)
            else:
                c = components(posixpath.normpath(posixpath.join(workdir, pat)))
            if subtree and (not c or c[-1] != "**"):
                c = c + ("**",)
            comps.append(c)
        return cls(patterns=tuple(comps), sources=tuple(p for p in patterns if p.strip()))

    def _toks(self, comp: str) -> tuple[_Token, ...]:
        t = self._tok_cache.get(comp)
        if t is None:
            t = self._tok_cache[comp] = _tokens(comp)
        return t

    def _comp(self, a: str, b: str, floating: bool) -> bool:
        key = (a, b, floating)
        r = self._comp_cache.get(key)
        if r is None:
            r = self._comp_cache[key] = _comp_match(a, b, floating, self._toks)
        return r

    def _intersects(self, a: tuple[str, ...], b: tuple[str, ...], floating: bool) -> bool:
        return _sequences_intersect(a, b, "**", lambda x, y: self._comp(x, y, floating))

    def match(self, path: str, subtree: bool = False, workdir: str | None = None) -> str | None:
        """The first pattern (as written) that the resolved path/glob ``path`` may hit.

        ``subtree`` also counts anything beneath ``path`` (listings, recursive searches,
        archives). Floating patterns (``*hidden*``: any component, anywhere) then only count
        when ``path`` is the work dir, one of its ancestors, or opaque, since such a file
        could sit in any directory and every recursive search would otherwise fire.
        """
        key = (path, workdir if subtree else None)
        if key in self._cache:
            return self._cache[key]
        stem = components(path)
        tree = stem + ("**",)
        anchored_ok = True
        if subtree:
            wd = components(workdir or "/")
            anchored_ok = "**" in stem or (len(stem) <= len(wd) and wd[: len(stem)] == stem)
        hit = None
        for pat, src in zip(self.patterns, self.sources):
            floating = bool(pat) and pat[0] == "**"
            comps = tree if subtree and (anchored_ok or not floating) else stem
            if self._intersects(comps, pat, floating):
                hit = src
                break
        self._cache[key] = hit
        return hit


def _strip_wild(text: str) -> str:
    return re.sub(r"\[[^]]*\]|[*?]", "", text)


def _comp_match(a: str, b: str, floating: bool, toks) -> bool:
    """One path component against one pattern component (either may hold wildcards)."""
    a_glob, b_glob = bool(GLOB_CHARS & set(a)), bool(GLOB_CHARS & set(b))
    if not a_glob and not b_glob:
        return a == b
    if floating and a_glob:
        # Both sides are globs and the pattern may sit anywhere: require the literal text of one
        # to fit the other, so ``*.py`` does not count as "could be named *hidden*".
        return fnmatch.fnmatchcase(_strip_wild(a), b) or fnmatch.fnmatchcase(_strip_wild(b), a)
    ta, tb = toks(a), toks(b)
    # Like bash, a leading wildcard does not match a leading dot.
    if (ta[0] in ("*", "?") and tb[0] == "\\.") or (tb[0] in ("*", "?") and ta[0] == "\\."):
        return False
    return _component_intersects(ta, tb)
