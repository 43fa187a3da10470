#!/usr/bin/env python3
"""Checks the shape of src/ (run by `make lint` and .ci/run):

- no import circle between files: an edge is a `use` or path of `crate::`, `super::` or
  `self::` naming an item of another file, or a parent's code calling into a child module
  (its `mod` and `pub use` lines are a facade, not a dependency);
- the floors import downwards only: the event store nothing of the projection runtime, the
  domain nothing of HTTP, the read models nothing of SCIM, and so on (FORBIDDEN below);
- sizes a reader can hold: no file over MAX_FILE lines and no function over MAX_FN lines,
  tests aside.

Prints what is wrong and exits 1, or prints a one-line summary.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# (module prefix, module prefixes it must not import)
FORBIDDEN = [
    ("eventstore", ["runtime", "read_models", "domain", "http", "api", "scim", "app", "mail"]),
    ("runtime", ["read_models", "domain", "http", "api", "scim", "app"]),
    ("read_models", ["http", "api", "scim", "app"]),
    ("domain", ["http", "api", "scim", "app", "runtime"]),
    ("http", ["api", "scim", "app"]),
    ("metrics", ["eventstore", "runtime", "read_models", "domain", "http", "api", "scim", "app", "secevents"]),
    ("mail", ["http", "api", "scim", "app"]),
    ("api", ["scim", "app"]),
    ("scim", ["api", "app"]),
    ("secevents", ["runtime", "read_models", "http", "api", "scim", "app", "mail"]),
]


MAX_FILE = 600
MAX_FN = 80


def sizes(mods):
    """Files and functions over the limits (code before `#[cfg(test)]` only)."""
    out = []
    fn = re.compile(r"^(\s*)(?:pub(?:\([a-z]+\))? )?(?:async )?fn (\w+)")
    for m, src in sorted(mods.items()):
        lines = without_tests(src).split("\n")
        if len(lines) - 1 > MAX_FILE:
            out.append(f"{m}: {len(lines) - 1} lines, over {MAX_FILE}")
        for k, line in enumerate(lines):
            hit = fn.match(line)
            if not hit:
                continue
            close = hit.group(1) + "}"
            end = next((e for e in range(k + 1, len(lines)) if lines[e] == close), None)
            if end is not None and end - k + 1 > MAX_FN:
                out.append(f"{m}::{hit.group(2)}: {end - k + 1} lines, over {MAX_FN}")
    return out


def modules():
    out = {}
    for d, _, files in os.walk(ROOT):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(d, f), ROOT)[:-3].replace(os.sep, "::")
            if rel.endswith("::mod"):
                rel = rel[: -len("::mod")]
            if rel == "lib":
                rel = "crate"
            with open(os.path.join(d, f), encoding="utf-8") as fh:
                out[rel] = fh.read()
    return out


def without_tests(src):
    i = src.find("#[cfg(test)]")
    return src if i < 0 else src[:i]


def resolve(mods, cur, path):
    parts = path.split("::")
    here = [] if cur in ("crate", "main") else cur.split("::")
    if parts[0] == "crate":
        base, parts = [], parts[1:]
    elif parts[0] == "super":
        base, parts = here[:-1], parts[1:]
        while parts and parts[0] == "super":
            base, parts = base[:-1], parts[1:]
    elif parts[0] == "self":
        base, parts = here, parts[1:]
    else:
        return None
    full = base + parts
    for n in range(len(full), 0, -1):
        m = "::".join(full[:n])
        if m in mods:
            return m
    return None


def edges(mods):
    out = {m: set() for m in mods}
    facade = re.compile(r"^\s*pub(\([a-z]+\))? use (self|super)::[^;]*;", re.M)
    path = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)(::\{([^;]*?)\})?")
    for m, src in mods.items():
        code = facade.sub("", without_tests(src))
        for hit in path.finditer(code):
            cands = [hit.group(1)]
            for part in (hit.group(3) or "").split(","):
                part = re.sub(r"::\{.*", "", part.strip().split(" as ")[0].strip())
                if part and part != "self":
                    cands.append(hit.group(1) + "::" + part.split("::")[0])
            for c in cands:
                t = resolve(mods, m, c)
                if t and t not in (m, "crate"):
                    out[m].add(t)
        body = re.sub(r"^\s*pub(\([a-z]+\))? use [^;]*;", "", code, flags=re.M)
        for hit in re.finditer(r"^\s*(?:pub(?:\([a-z]+\))? )?mod ([a-z_0-9]+);", code, re.M):
            child = hit.group(1) if m == "crate" else f"{m}::{hit.group(1)}"
            rest = body.replace(f"mod {hit.group(1)};", "")
            if child in mods and re.search(rf"(?<![A-Za-z0-9_:]){hit.group(1)}::", rest):
                out[m].add(child)
    return out


def cycles(graph):
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def under(m, prefix):
    return m == prefix or m.startswith(prefix + "::")


def main():
    mods = modules()
    graph = edges(mods)
    problems = []
    for comp in cycles(graph):
        inside = {m: sorted(t for t in graph[m] if t in comp) for m in comp}
        detail = "; ".join(f"{m} -> {', '.join(ts)}" for m, ts in inside.items())
        problems.append(f"import circle through {len(comp)} files: {detail}")
    for m, targets in sorted(graph.items()):
        for layer, banned in FORBIDDEN:
            if not under(m, layer):
                continue
            for t in sorted(targets):
                if any(under(t, b) for b in banned):
                    problems.append(f"{m} imports {t}: {layer} must not depend on it")
    problems.extend(sizes(mods))
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(
        f"layers: {len(mods)} files, {sum(len(t) for t in graph.values())} imports, no circles, "
        f"no file over {MAX_FILE} lines, no function over {MAX_FN}"
    )


if __name__ == "__main__":
    main()
