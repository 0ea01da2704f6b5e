"""No import cycle among genqueue's modules, and the error tree and the contract are leaves.

The graph is the one import-linter reads (grimp), every import counted: at the top of a module,
inside a function, or under ``TYPE_CHECKING`` (the last only for the two leaves' rules, which
import-linter checks too).
"""

from __future__ import annotations

import sys

import grimp
import pytest

PACKAGES = ("worker", "api_producer", "genqueue")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def _cycle(graph: grimp.ImportGraph) -> list[str] | None:
    """One import cycle among ``graph``'s modules (its modules in order), or ``None``."""
    imports = {
        module: sorted(graph.find_modules_directly_imported_by(module)) for module in graph.modules
    }
    done: set[str] = set()
    for start in sorted(imports):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:  # an iterative depth-first walk: the graph is deep
            module, index = stack.pop()
            if index == 0:
                path.append(module)
                on_path.add(module)
            followers = [name for name in imports.get(module, ()) if name in imports]
            if index < len(followers):
                stack.append((module, index + 1))
                following = followers[index]
                if following in on_path:
                    return [*path[path.index(following) :], following]
                if following not in done:
                    stack.append((following, 0))
                continue
            path.pop()
            on_path.discard(module)
            done.add(module)
    return None


def test_no_module_imports_itself_round_a_cycle(graph: grimp.ImportGraph) -> None:
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_walk_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("a", "a.b", "a.c", "a.d"):
        graph.add_module(module)
    graph.add_import(importer="a.b", imported="a.c")
    graph.add_import(importer="a.c", imported="a.d")
    assert _cycle(graph) is None
    graph.add_import(importer="a.d", imported="a.b")
    assert _cycle(graph) == ["a.b", "a.c", "a.d", "a.b"]


@pytest.mark.parametrize("leaf", ["worker.errors", "worker.contract", "genqueue.errors"])
def test_the_leaves_import_nothing_of_genqueue(graph: grimp.ImportGraph, leaf: str) -> None:
    assert graph.find_modules_directly_imported_by(leaf) == set()


def test_the_contract_imports_only_pydantic_and_the_standard_library() -> None:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)
    imported = {
        name.split(".")[0] for name in graph.find_modules_directly_imported_by("worker.contract")
    }
    assert imported - set(sys.stdlib_module_names) <= {"pydantic", "pydantic_core"}
