#!/usr/bin/env python3
"""Checks the code structure that ARCHITECTURE.md promises, mechanically, from the source text.

- The core modules import nothing of the edge: no `config`, `http`, `server`, `session` stores,
  `metrics`, `tls`, `logging`, `oauth` provider client or the LAPI client.
- No module cycles: the graph of `crate::` references between files (a file and its own parent
  or children excepted) has no cycle.
- No file in src/ is longer than MAX_LINES.
- Every dependency in Cargo.toml is used by the code that may use it.

Prints every problem and exits 1 when there is one. Run from anywhere: `python3 scripts/check-structure.py`.
"""
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
MAX_LINES = 600

# The pure core (ARCHITECTURE.md, "Invariants"): plain functions over plain data.
CORE = {
    "client_ip",
    "domain",
    "duration",
    "crowdsec::table",
    "crowdsec::stream",
    "ratelimit",
    "rules",
    "decision",
    "oauth::email",
    "oauth::redirect",
    "session::cookie",
    "clock",
}


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].replace(os.sep, "::")
    if rel in ("lib", "main"):
        return "crate"
    if rel.endswith("::mod"):
        rel = rel[: -len("::mod")]
    if rel.endswith("::tests") or rel == "tests":
        rel = rel[: -len("::tests")] if "::" in rel else rel
    return rel


def code_of(text):
    """The text without `#[cfg(test)] mod tests { ... }` blocks at the end, line comments and
    doc comments, so that tests and prose do not count as imports."""
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod tests\s*\{", text, re.M)
    if cut:
        text = text[: cut.start()]
    return "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))


def files():
    for d, _, names in os.walk(SRC):
        for n in sorted(names):
            if n.endswith(".rs"):
                yield os.path.join(d, n)


def known_modules():
    return {module_of(p) for p in files()}


def target(ref, modules):
    """The longest known module that a `crate::a::b::c` reference names."""
    parts = ref.split("::")
    for i in range(len(parts), 0, -1):
        m = "::".join(parts[:i])
        if m in modules:
            return m
    return None


def refs(text):
    """Every `crate::x::y` path, including those inside `use crate::x::{y, z}` groups."""
    out = set()
    for m in re.finditer(r"\bcrate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)(::\{([^}]*)\})?", text):
        base = m.group(1)
        out.add(base)
        if m.group(3):
            for item in m.group(3).split(","):
                item = item.strip().split("::")[0].split(" ")[0]
                if re.fullmatch(r"[a-z_][a-z0-9_]*", item):
                    out.add(f"{base}::{item}")
    return out


def related(a, b):
    return a == b or a.startswith(b + "::") or b.startswith(a + "::")


def main():
    problems = []
    modules = known_modules()
    graph = {}
    for path in files():
        rel = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        n = text.count("\n")
        if n > MAX_LINES:
            problems.append(f"{rel}: {n} lines (at most {MAX_LINES}; split it by job)")
        if path.endswith(os.sep + "tests.rs"):
            continue
        me = module_of(path)
        for r in refs(code_of(text)):
            t = target(r, modules)
            if t is None or t == "crate" or related(me, t):
                continue
            graph.setdefault(me, set()).add(t)
    for m in sorted(CORE & modules):
        for t in sorted(graph.get(m, ())):
            if t not in CORE:
                problems.append(f"core module {m} uses {t}, which is not core")
    # Cycles, by depth-first search over the file graph.
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                problems.append("module cycle: " + " → ".join(cycle))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    problems += unused_dependencies()
    for p in problems:
        print(p)
    if problems:
        sys.stdout.flush()
        print(f"check-structure: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("check-structure: ok")
    return 0


def text_under(*dirs):
    out = []
    for d in dirs:
        for base, _, names in os.walk(os.path.join(ROOT, d)):
            if "node_modules" in base or os.sep + "target" in base:
                continue
            for n in names:
                if n.endswith(".rs"):
                    with open(os.path.join(base, n), encoding="utf-8") as f:
                        out.append(f.read())
    return "\n".join(out)


def unused_dependencies():
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        cargo = tomllib.load(f)
    lib = text_under("src")
    every = lib + text_under("tests", "benches", "examples")
    problems = []
    for table, code, where in [
        ("dependencies", lib + text_under("examples", "benches"), "src/, benches/ or examples/"),
        ("dev-dependencies", every, "tests/, benches/ or examples/"),
    ]:
        for name in cargo.get(table, {}):
            if table == "dev-dependencies" and name in cargo.get("dependencies", {}):
                continue  # a feature added for tests only
            ident = name.replace("-", "_")
            if not re.search(rf"\b{ident}::|\buse {ident}\b|\b{ident}!", code):
                problems.append(f"Cargo.toml [{table}] {name}: not used in {where}")
    return problems


if __name__ == "__main__":
    sys.exit(main())
