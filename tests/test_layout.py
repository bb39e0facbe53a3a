"""The package layout: imports between the top-level folders go one way, and pyproject ships every package.

Allowed: ``training`` -> ``clients`` -> core, ``server`` -> ``clients`` -> core. The core
(``tokfilter/``) imports no folder, except its front ends (the CLI and the demo), which run them all.
"""

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"tokfilter.training": "training", "tokfilter.clients": "clients", "tokfilter.server": "server"}
FRONT_ENDS = {"tokfilter/cli.py", "tokfilter/demo.py"}
# what each part may import, besides itself
ALLOWED = {"core": set(), "clients": {"core"}, "server": {"core", "clients"}, "training": {"core", "clients"}}


def part_of_module(name: str) -> str | None:
    """``training``, ``clients``, ``server`` or ``core`` for a tokfilter module name; None otherwise."""
    if name != "tokfilter" and not name.startswith("tokfilter."):
        return None
    for package, folder in FOLDERS.items():
        if name == package or name.startswith(package + "."):
            return folder
    return "core"


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[0] != "tokfilter":
        parts.insert(0, "tokfilter")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names, at any depth (lazy imports count)."""
    names = set()
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def source_files() -> list[Path]:
    return sorted(p for folder in ("tokfilter", *FOLDERS.values()) for p in (ROOT / folder).rglob("*.py"))


def test_imports_between_folders_go_one_way():
    wrong = []
    for path in source_files():
        rel = str(path.relative_to(ROOT))
        if rel in FRONT_ENDS:
            continue
        own = part_of_module(module_name(path))
        for name in imported_modules(path):
            other = part_of_module(name)
            if other is not None and other != own and other not in ALLOWED[own]:
                wrong.append(f"{rel} ({own}) imports {name} ({other})")
    assert not wrong, "imports against the layout's direction:\n" + "\n".join(sorted(wrong))


def test_the_allowed_directions_have_no_cycle():
    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in ALLOWED[start])

    assert not [part for part in ALLOWED if reaches(part, part)]


@pytest.mark.parametrize("source, expected", [
    ("from tokfilter.server.model_repo import x\n", "clients imports tokfilter.server.model_repo (server)"),
    ("def f():\n    import tokfilter.training.pretrain.model\n", "clients imports tokfilter.training.pretrain.model (training)"),
    ("from ...server import gateway\n", "clients imports tokfilter.server (server)"),
])
def test_a_wrong_import_is_found(tmp_path, source, expected):
    """The check sees module-level, lazy and relative imports (it would have caught clients -> server)."""
    path = tmp_path / "clients" / "engines" / "bad.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    found = [f"clients imports {name} ({part_of_module(name)})" for name in imported_modules(path, tmp_path)
             if part_of_module(name) not in ALLOWED["clients"] | {None, "clients"}]
    assert expected in found


def test_pyproject_lists_every_package_and_the_experiment_configs():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {module_name(p) for folder in ("tokfilter", *FOLDERS.values()) for p in (ROOT / folder).rglob("__init__.py")}
    data_only = {"tokfilter.model_repo"}  # the Triton model repository's configs (tests/test_installed_package.py)
    assert set(setuptools["packages"]) == on_disk | data_only
    assert "configs/*.json" in setuptools["package-data"]["tokfilter.training.experiments"]
    assert list((ROOT / "training" / "experiments" / "configs").glob("*.json"))


def test_readme_layout_table_names_every_package_folder():
    """The README's layout table is the map of the tree: each package folder has a row, or is named
    in its parent folder's row (as ``ops/`` is in ``training/pretrain/``'s)."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):]
    rows = {line.split("|")[1].strip().strip("`"): line for line in table.splitlines() if line.startswith("| `")}
    missing = []
    for init in sorted(p for folder in FOLDERS.values() for p in (ROOT / folder).rglob("__init__.py")):
        if not [m for m in init.parent.glob("*.py") if m.name != "__init__.py"]:
            continue  # a folder of subpackages only (training/): its subfolders have the rows
        folder = init.parent.relative_to(ROOT).as_posix() + "/"
        parent = init.parent.parent.relative_to(ROOT).as_posix() + "/"
        if folder not in rows and f"`{init.parent.name}/`" not in rows.get(parent, ""):
            missing.append(folder)
    assert not missing, f"README layout table lacks {missing}"
