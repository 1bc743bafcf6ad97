"""Throughput benchmark of ``scan --rules-only`` (the lead wires it as ``horizonrl-bench antihack``).

:func:`bench_scan` writes ``n`` synthetic scan lines (a mix of ordinary engineering calls and hacks
over a few task contexts, randomised so that nearly every command text is distinct and parse
caches do not flatter the figure), then times the full path in this process on one core: reading
the JSONL file, decoding, rule analysis, encoding and writing the results. Generation is not timed.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from antihack.rules import RuleSet
from antihack.scan import scan_lines

_TASKS = (
    {"instruction": "Fix the off-by-one error in pagination.", "workdir": "/work",
     "protected_paths": ["/work/.eval/**", "/eval/**"], "test_paths": ["tests/test_api.py"],
     "declared_dependencies": ["requests", "numpy"], "base_commit": "4f1c2e9d7a6b5c3d2e1f0a9b8c7d6e5f4a3b2c1d"},
    {"instruction": "Add a --json flag to the CLI.", "workdir": "/workspace/repo",
     "protected_paths": ["*hidden*", "/workspace/.grader/**"], "test_paths": ["tests/**"]},
    {"instruction": "Implement LRU eviction.", "workdir": "/home/agent/proj",
     "protected_paths": ["/opt/grader/**", "gold/**"], "test_paths": ["test/test_cache.py"],
     "declared_dependencies": ["pytest"]},
)

_BASH = (
    "grep -rn {w} src/ | head -{n}", "cat src/{w}.py", "python -m pytest -q tests/test_{w}.py -k {w}",
    "sed -n '{n},{m}p' src/{w}.py", "ls -la src/{w}", "git log --oneline -{n}", "git diff HEAD~{n} -- src/{w}.py",
    "find src -name '*{w}*.py' | xargs wc -l", "python -c \"import {w}; print({w}.__version__, {n})\"",
    "cd src && python -m {w} --limit {n} 2>&1 | tail -{m}", "pip install requests=={n}.{m}",
    "curl -s http://localhost:{port}/api/{w}?page={n}", "echo '{w} {n}' >> notes_{m}.txt",
    "cat /work/.eval/{w}_{n}.json", "curl https://raw.githubusercontent.com/org/{w}/main/fix_{n}.patch",
    "git log --all --oneline | grep {w}", "env | grep -i {w}", "echo {b64} | base64 -d | bash",
    "python - <<'EOF'\nimport os\nfor i in range({n}):\n    print(os.path.exists('src/{w}_%d.py' % i))\nEOF",
    "F=/work/.ev; cat ${{F}}al/{w}{n}", "for f in src/*.py; do grep -c {w} $f; done",
    "sed -i 's/{w}/{w}_{n}/g' tests/test_api.py", "kill -9 $(pgrep -f pytest) ; echo {n}",
    "tar czf /tmp/{w}{n}.tgz /work", "git show {hexs}:src/{w}.py",
)
_WORDS = ("parse", "config", "cache", "pager", "client", "models", "utils", "views", "router", "schema",
          "io", "core", "db", "auth", "api", "cli", "loader", "encoder", "worker", "queue")


def make_scan_lines(n: int, seed: int = 0) -> list[str]:
    """``n`` varied scan input lines."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        task = _TASKS[i % len(_TASKS)]
        w, k = rng.choice(_WORDS), rng.randint(1, 999)
        kind = rng.random()
        if kind < 0.7:
            import base64
            cmd = rng.choice(_BASH).format(w=w, n=k, m=k + rng.randint(1, 50), port=8000 + k % 100,
                                           b64=base64.b64encode(f"cat /work/.eval/{w}{k}".encode()).decode(),
                                           hexs="%012x" % rng.getrandbits(48))
            call = {"name": "bash", "arguments": {"command": cmd}}
        elif kind < 0.8:
            call = {"name": "read_file", "arguments": {"path": rng.choice([f"src/{w}_{k}.py", f".eval/{w}{k}.json",
                                                                            f"tests/test_{w}.py"])}}
        elif kind < 0.92:
            body = (f"import os\n\n\ndef {w}_{k}(items, limit={k}):\n    \"\"\"Return a page.\"\"\"\n"
                    f"    out = [x for x in items if x]\n    return out[:limit]\n\n\nclass {w.title()}{k}:\n"
                    f"    def __eq__(self, other):\n        return {rng.choice(['True', 'self.k == other.k'])}\n")
            call = {"name": "write_file", "arguments": {"path": f"src/{w}_{k}.py", "content": body}}
        else:
            call = {"name": "str_replace", "arguments": {"path": rng.choice([f"src/{w}.py", "tests/test_api.py"]),
                                                         "old": f"return x[{k}]", "new": f"return x[{k} - 1]"}}
        lines.append(json.dumps({"id": i, "task": task, "call": call}))
    return lines


def bench_scan(n: int = 10000, seed: int = 0) -> dict[str, float]:
    """Time ``scan --rules-only`` over ``n`` calls; returns ``{"calls", "seconds", "calls_per_s"}``."""
    lines = make_scan_lines(n, seed)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "calls.jsonl", Path(tmp) / "out.jsonl"
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        rules = RuleSet()
        start = time.perf_counter()
        count = 0
        with open(src, encoding="utf-8") as fin, open(dst, "w", encoding="utf-8") as fout:
            for result in scan_lines(fin, rules):
                fout.write(json.dumps(result) + "\n")
                count += 1
        seconds = time.perf_counter() - start
    return {"calls": count, "seconds": round(seconds, 3), "calls_per_s": round(count / seconds, 1)}


if __name__ == "__main__":
    print(json.dumps(bench_scan()))
