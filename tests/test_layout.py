"""The package is laid out by wings, and a wing imports only the wings below it (README, Layout)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mnist_models"
# Lowest first: a module may import its own wing and those before it, never one after it.
WINGS = ("system", "core", "scale", "runs", "profiling", "reporting", "cli")


def wing_of(module: str) -> str:
    """'mnist_models.runs.train' -> 'runs'; the top-level modules (cli, __main__) are the edge."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in WINGS else "cli"


def imported_modules(path: Path) -> list[str]:
    """Every mnist_models module that `path` imports, relative imports resolved."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found += [target] + names
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [m for m in found if m.startswith("mnist_models") or m.split(".")[0] in ("bench", "tests", "conftest", "grid")]


def test_no_wing_imports_a_higher_one():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = wing_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for target in imported_modules(path):
            if not target.startswith("mnist_models"):
                wrong.append(f"{path.relative_to(PACKAGE)} imports {target} (the library never imports bench/ or tests/)")
                continue
            other = wing_of(target) if target.count(".") >= 1 else own
            if target.count(".") == 1 and target.split(".")[1] in WINGS:  # `from .. import runs`-style package imports
                other = target.split(".")[1]
            if WINGS.index(other) > WINGS.index(own):
                wrong.append(f"{path.relative_to(PACKAGE)} ({own}) imports {target} ({other})")
    assert wrong == []


def test_the_layout_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "mnist_models" / "core" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ..runs.train import train\nfrom . import nets\n")
    assert wing_of("mnist_models.core.bad") == "core"
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "mnist_models"
    try:
        assert imported_modules(bad)[:2] == ["mnist_models.runs.train", "mnist_models.runs.train.train"]
    finally:
        PACKAGE = saved
