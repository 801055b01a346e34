"""How tinygrad_gpt's modules import each other, read from the source with `ast` (nothing is imported):

- no cycle: no module imports (directly or through others) a module that imports it back, so every module can be
  imported first and each import of ours sits at the top of its module;
- no import of a tinygrad_gpt module inside a function, except those ALLOWED names with its reason (optional
  third-party imports, cupy, mpi4py, numba, matplotlib, may stay inside functions: that is their point);
- no import of torch anywhere under tinygrad_gpt/, not even inside a function (test_no_torch.py imports every
  module with torch blocked, which only sees the imports that run).

The edges are the imports that run when a module is imported: its top-level statements, those inside a top-level
if/try/with and class bodies. `from X import name` depends on X, and on X.name when that is a module; importing X.Y.Z
also runs the packages X.Y and X, except those the importing module lives in (they are always imported first).
importlib.import_module calls (the lecture's rungs, looked up by name) are not imports here.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tinygrad_gpt"

# {(module, function): why}: an import of a tinygrad_gpt module allowed inside that function. Empty: cli.py imports
# its subcommands at the top (a lazy one would go here, with the start-up time it saves).
ALLOWED = {}


def modules(root, package=PACKAGE):
    """{dotted module name: path} of every .py file under root/package."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_package(path):
    return path.name == "__init__.py"


def _ancestors(name):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def targets(node, module, path, known, package=PACKAGE):
    """The modules of our package that import statement `node` in `module` runs (see the module docstring)."""
    out = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == package:
                out.append(alias.name)
                out += [a for a in _ancestors(alias.name) if a not in _ancestors(module)]
        return [t for t in out if t in known]
    if node.level:
        base = module.split(".") if _is_package(path) else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != package:
        return []
    out += [a for a in _ancestors(source) if a not in _ancestors(module)]
    if source not in _ancestors(module) and source != module:
        out.append(source)
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        out.append(sub if sub in known else source)   # a name defined in `source` needs its body run
    return [t for t in out if t in known and t != module]


def _walk(node, in_function=False, scope=""):
    """(statement, inside a function?, the enclosing function's qualified name) for every import below `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function, scope
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{scope}.{child.name}" if scope else child.name
            yield from _walk(child, in_function or not isinstance(child, ast.ClassDef), name)
        else:
            yield from _walk(child, in_function, scope)


def _top_names(node):
    """The top-level package names an import statement names (none for a relative import)."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    return [] if node.level else [(node.module or "").split(".")[0]]


def scan(root, package=PACKAGE):
    """(graph {module: set of modules its import runs}, function-level imports of ours [(module, function, line,
    source)], every imported top-level name [(module, line, name)])."""
    known = modules(root, package)
    graph, lazy, names = {m: set() for m in known}, [], []
    for module, path in known.items():
        source = path.read_text(encoding="utf-8")
        for node, in_function, scope in _walk(ast.parse(source)):
            names += [(module, node.lineno, name) for name in _top_names(node)]
            ours = targets(node, module, path, known, package)
            if not ours:
                continue
            if in_function:
                lazy.append((module, scope, node.lineno, ast.get_source_segment(source, node)))
            else:
                graph[module].update(ours)
    return graph, lazy, names


def find_cycle(graph):
    """One cycle [a, b, ..., a] of the graph, or None (an iterative depth-first search)."""
    state = {}                                     # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycle():
    graph, _, _ = scan(ROOT)
    assert "tinygrad_gpt.tensor" in graph and graph["tinygrad_gpt.model"], "the scan found the package"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_level_import_of_our_modules():
    _, lazy, _ = scan(ROOT)
    found = [f"{m}.{fn} (line {line}): {text}" for m, fn, line, text in lazy if (m, fn) not in ALLOWED]
    assert not found, "imports of tinygrad_gpt modules inside functions (move them to the top, or add them to " \
                      "ALLOWED with the reason):\n" + "\n".join(found)
    unused = [key for key in ALLOWED if key not in {(m, fn) for m, fn, _, _ in lazy}]
    assert not unused, f"ALLOWED names imports that no longer exist: {unused}"


def test_tinygrad_gpt_never_imports_torch():
    _, _, names = scan(ROOT)
    assert len(names) > 100, "the scan found the imports"
    torch = [f"{m} line {line}" for m, line, name in names if name == "torch"]
    assert not torch, f"tinygrad_gpt imports torch: {torch}"


def test_the_checks_find_what_they_look_for(tmp_path):
    """The scan on a small package with each fault: a cycle through a relative import, one through `from package
    import name` of a package's __init__, a function-level import, and an import of torch inside a function."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from . import a\nVERSION = 1\n",
        "a.py": "from .sub import b\n",
        "sub/__init__.py": "",
        "sub/b.py": "import pkg.c\n",
        "c.py": "if True:\n    from .a import x\n",              # a -> sub.b -> c -> a
        "d.py": "from . import VERSION\n",                      # d -> pkg; pkg imports no d: no cycle
        "e.py": "class K:\n    def f(self):\n        from . import d\n        import torch\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph, lazy, names = scan(tmp_path, "pkg")
    assert graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg"}
    cycle = find_cycle(graph)
    assert cycle is not None and {"pkg.a", "pkg.sub.b", "pkg.c"} <= set(cycle)
    assert [(m, fn, line) for m, fn, line, _ in lazy] == [("pkg.e", "K.f", 3)]
    assert ("pkg.e", 4, "torch") in names
    (pkg / "c.py").write_text("")
    assert find_cycle(scan(tmp_path, "pkg")[0]) is None
    (pkg / "d.py").write_text("from . import VERSION\nfrom . import e\n")
    (pkg / "__init__.py").write_text("from . import d\nVERSION = 1\n")       # pkg -> d -> pkg
    assert find_cycle(scan(tmp_path, "pkg")[0]) is not None
