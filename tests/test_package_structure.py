"""The package's import structure: no circle, and the placement engine and the
K-FAC core stand apart (read from the source with ``ast``, nothing imported)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "kfac_ext"


def _modules():
    """{dotted name: path} of every module of kfac_ext."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name, path):
    """The kfac_ext modules that ``name`` imports, at the top or inside a function
    (a lazy import closes a circle as surely as an eager one). The root package
    ``kfac_ext`` is left out: every submodule loads it first, and it imports
    nothing of ours at its top; ``from kfac_ext import _C`` (the compiled ops) names
    no module of ours. Imports under ``if TYPE_CHECKING:`` are left out: they name a
    type for the annotations and are never executed, so they close no circle."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
    return {m for m in found if m in MODULES and m not in (name, "kfac_ext")}


def _is_placement(name):
    return name == "kfac_ext.placement" or name.startswith("kfac_ext.placement.")


# The command line (`kfac-ext train|place|pipeline|bench`) stands above both halves:
# it is the one module that imports from each, and only to run a subcommand.
_ABOVE_BOTH = ("kfac_ext.cli", "kfac_ext.__main__")


def _is_core(name):
    return (
        name.count(".") >= 1
        and not _is_placement(name)
        and not name.startswith("kfac_ext.app")
        and name not in _ABOVE_BOTH
    )


def test_the_command_line_is_seen_to_import_both_halves():
    # guards _ABOVE_BOTH against excusing a module that no longer needs it
    found = _imports("kfac_ext.cli", MODULES["kfac_ext.cli"])
    assert "kfac_ext.placement.cli" in found and "kfac_ext.app.train" in found


def test_the_scan_sees_the_package():
    # guards the tests below against passing because they read nothing
    assert "kfac_ext.assignment" in MODULES and "kfac_ext.placement.graph" in MODULES
    assert "kfac_ext.assignment" in _imports("kfac_ext.distributed", MODULES["kfac_ext.distributed"])


def test_no_import_circle():
    graph = {m: _imports(m, p) for m, p in MODULES.items()}
    done, on_path = set(), []

    def visit(m):
        if m in on_path:
            pytest.fail("import circle: " + " -> ".join(on_path[on_path.index(m) :] + [m]))
        if m in done:
            return
        on_path.append(m)
        for d in sorted(graph[m]):
            visit(d)
        on_path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


@pytest.mark.parametrize("name", sorted(m for m in MODULES if _is_placement(m)))
def test_placement_imports_nothing_of_the_kfac_core(name):
    outside = {m for m in _imports(name, MODULES[name]) if not _is_placement(m)}
    assert not outside, f"{name} imports {sorted(outside)}"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if _is_core(m)))
def test_kfac_core_imports_nothing_of_placement(name):
    inside = {m for m in _imports(name, MODULES[name]) if _is_placement(m)}
    assert not inside, f"{name} imports {sorted(inside)}"
