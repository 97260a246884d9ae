"""The package's layout as the README's model map describes it: ``model/`` is the paper and nothing else."""
import ast
from pathlib import Path

import attend_infer_repeat

PACKAGE = Path(attend_infer_repeat.__file__).parent


def _imports(path: Path):
    """(module imported, the function it is imported in or None) for every import of ``path``."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, func):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.ImportFrom):
                found.append(("." * child.level + (child.module or ""), func))
            elif isinstance(child, ast.Import):
                found.extend((a.name, func) for a in child.names)
            visit(child, inner)
    visit(tree, None)
    return found


def test_the_model_package_imports_only_torch_and_the_packages_errors():
    files = sorted((PACKAGE / "model").glob("*.py"))
    assert {f.name for f in files} >= {"air.py", "objective.py", "networks.py", "attention.py", "config.py"}
    outside = []
    for f in files:
        for module, _func in _imports(f):
            if module.startswith(".") and not module.startswith("..") and len(module) > 1:
                if not (PACKAGE / "model" / f"{module[1:].split('.')[0]}.py").exists():  # a lazy import gone stale
                    outside.append(f"{f.name}: {module} (no such module in model/)")
            if module.startswith("..") and module != "..errors":
                outside.append(f"{f.name}: {module}")
            if not module.startswith(".") and module.split(".")[0] not in {"torch", "math", "dataclasses",
                                                                             "contextlib", "__future__", "numpy",
                                                                             "typing"}:
                outside.append(f"{f.name}: {module}")
    assert not outside, outside


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, module: str, names: list[str]) -> list[str]:
    """The package modules an import statement loads (``from .x import y`` loads x.y when y is a module)."""
    if not module.startswith("."):
        return [module] if module.split(".")[0] == "attend_infer_repeat" else []
    level = len(module) - len(module.lstrip("."))
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    target = ".".join(base + ([module.lstrip(".")] if module.lstrip(".") else []))
    return [target] + [f"{target}.{n}" for n in names]


def test_no_module_of_the_package_imports_itself_back_not_even_inside_a_function():
    modules = {_module_name(f): f for f in PACKAGE.rglob("*.py")}
    graph = {}
    for name, f in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = "." * node.level + (node.module or "")
                edges.update(_resolve(name, f.name == "__init__.py", mod, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names)
        # a package's __init__ re-exporting its own modules is how a package is read, not a circle
        graph[name] = {e for e in edges if e in modules and e != name and not name.startswith(e + ".")}
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


#: A module a reader can hold in mind at once (the layout issue asked for about 450 lines at most).
MAX_MODULE_LINES = 470


def test_no_module_of_the_package_is_longer_than_a_reader_can_hold_at_once():
    long = {str(p.relative_to(PACKAGE)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules (lines): {long}"
