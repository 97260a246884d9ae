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
        for module, func in _imports(f):
            if module.startswith(".") and not module.startswith("..") and len(module) > 1:
                if not (PACKAGE / "model" / f"{module[1:].split('.')[0]}.py").exists():  # a lazy import gone stale
                    outside.append(f"{f.name}: {module} (no such module in model/)")
            if module.startswith("..") and module != "..errors" and (module, func) != ("..checkpoint", "load"):
                outside.append(f"{f.name}: {module}")
            if not module.startswith(".") and module.split(".")[0] not in {"torch", "math", "dataclasses",
                                                                             "contextlib", "__future__", "numpy",
                                                                             "typing"}:
                outside.append(f"{f.name}: {module}")
    assert not outside, outside
