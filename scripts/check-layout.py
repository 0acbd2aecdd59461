#!/usr/bin/env python3
"""The workspace's layout, checked: its import graph has no circle, and no
source file is longer than MAX_LINES before its tests.

The graph has two levels: crates (the workspace's own dependencies, from `cargo
metadata`, normal and build dependencies) and, inside each crate, its
top-level modules (`crate::x` and `super::x` paths in each file of
src/, test modules left out: a test may use its whole crate). Prints
both graphs (unless --quiet); exits 1 on a circle or a file too long.
scripts/test.sh runs it.

    scripts/check-layout.py [--quiet]
"""

import json
import os
import re
import subprocess
import sys

# A file past this (before its `#[cfg(test)]` module) is two files.
MAX_LINES = 700

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def crates():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    meta = json.loads(out)
    names = {p["name"] for p in meta["packages"]}
    graph, dirs = {}, {}
    for p in meta["packages"]:
        graph[p["name"]] = sorted(
            {d["name"] for d in p["dependencies"]
             if d["name"] in names and d.get("kind") in (None, "build") and d["name"] != p["name"]})
        dirs[p["name"]] = os.path.dirname(p["manifest_path"])
    return graph, dirs


def strip_tests(text):
    """The text before the first `#[cfg(test)]` item at the top level."""
    match = re.search(r"^#\[cfg\(test\)\]", text, re.M)
    return text[:match.start()] if match else text


def module_of(src, path):
    """The top-level module a file belongs to (None for the crate root)."""
    rel = os.path.relpath(path, src)
    parts = rel[:-3].split(os.sep)
    if parts[0] in ("lib", "main"):
        return None
    return parts[0] if parts[0] != "mod" else None


def modules(src):
    graph = {}
    files = []
    for dirpath, _, names in os.walk(src):
        files += [os.path.join(dirpath, n) for n in names if n.endswith(".rs") and n != "tests.rs"]
    for path in files:
        mod = module_of(src, path)
        if mod is None:
            continue
        graph.setdefault(mod, set())
        rel = os.path.relpath(path, src)[:-3].split(os.sep)
        # A file's `super::` is its parent module: for src/x.rs or
        # src/x/mod.rs that is the crate root, deeper it stays inside x.
        top_level_file = len(rel) == 1 or (len(rel) == 2 and rel[1] == "mod")
        text = strip_tests(open(path, encoding="utf-8").read())
        text = re.sub(r"//[^\n]*", "", text)
        used = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
        if top_level_file:
            used |= set(re.findall(r"\bsuper::([a-z_][a-z0-9_]*)", text))
        graph[mod] |= {u for u in used if u != mod}
    known = set(graph)
    return {m: sorted(d & known) for m, d in graph.items()}


def circles(graph):
    """Every strongly connected component with more than one node."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    quiet = "--quiet" in sys.argv
    failed = False
    graph, dirs = crates()
    if not quiet:
        print("crates:")
        for name in sorted(graph):
            print(f"  {name} -> {', '.join(graph[name]) or '(none)'}")
    for circle in circles(graph):
        print(f"circle among crates: {' <-> '.join(circle)}")
        failed = True
    for name in sorted(dirs):
        src = os.path.join(dirs[name], "src")
        if not os.path.isdir(src):
            continue
        mods = modules(src)
        if not quiet:
            print(f"{name} modules:")
            for m in sorted(mods):
                print(f"  {m} -> {', '.join(mods[m]) or '(none)'}")
        for circle in circles(mods):
            print(f"circle among the modules of {name}: {' <-> '.join(circle)}")
            failed = True
    for path in rust_files():
        text = strip_tests(open(path, encoding="utf-8").read())
        lines = text.count("\n")
        if lines > MAX_LINES:
            print(f"{os.path.relpath(path, ROOT)}: {lines} lines before its tests (at most {MAX_LINES})")
            failed = True
    if failed:
        sys.exit(1)
    if quiet:
        print(f"layout: no circle among crates or modules, no file over {MAX_LINES} lines before its tests")


def rust_files():
    """The workspace's Rust sources, the tests left out: the integration
    tests and a module's `tests.rs` (a `#[cfg(test)] mod tests;`)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.rs"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [os.path.join(ROOT, p) for p in out.split()
            if not p.startswith("tests/") and os.path.basename(p) != "tests.rs" and os.path.exists(os.path.join(ROOT, p))]


if __name__ == "__main__":
    main()
