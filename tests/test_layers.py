"""The import rules that import-linter's layers contract (pyproject.toml, `make lint`) does not
express: a private module (`_name`) is imported only from inside the package that holds it, so
packages talk to each other through their public surface."""

from __future__ import annotations

import grimp


def _owner(module: str) -> str | None:
    """The package a private module belongs to, or None for a public module."""
    parts = module.split(".")
    for i, part in enumerate(parts[1:], 1):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def _outside_imports(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    found = []
    for module in graph.modules:
        owner = _owner(module)
        if owner is None:
            continue
        for importer in graph.find_modules_that_directly_import(module):
            if importer != owner and not importer.startswith(owner + "."):
                found.append((importer, module))
    return sorted(found)


def test_private_modules_are_imported_only_from_their_own_package() -> None:
    assert _outside_imports(grimp.build_graph("foretell")) == []


def test_an_import_of_another_package_s_private_module_is_found() -> None:
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.a._inner", "pkg.b", "pkg.a.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.b", imported="pkg.a._inner")
    graph.add_import(importer="pkg.a.c", imported="pkg.a._inner")
    assert _outside_imports(graph) == [("pkg.b", "pkg.a._inner")]


def test_the_private_part_of_a_module_path_decides_its_owner() -> None:
    assert _owner("foretell.services.registry._queries") == "foretell.services.registry"
    assert _owner("foretell._embedded") == "foretell"
    assert _owner("foretell.services.registry") is None
    assert _owner("foretell.sdk.__main__") is None
