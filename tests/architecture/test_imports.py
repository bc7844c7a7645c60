"""The layer rules of docs/architecture.md, checked on the source: no upward import, no cycle."""

from __future__ import annotations

from tests.architecture.import_graph import (
    ALLOWED,
    FORBIDDEN_LIBRARIES,
    PACKAGES,
    cycles,
    import_graph,
)


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{module} -> {target}"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if target.split(".")[0] in PACKAGES
        and target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert upward == []


def test_models_import_no_orchestration_database_or_bucket_library():
    found = [
        f"{module} -> {target}"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if target in FORBIDDEN_LIBRARIES.get(module.split(".")[0], set())
    ]
    assert found == []


def test_no_two_modules_import_each_other_even_indirectly():
    assert cycles(import_graph()) == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    graph = {"models.a": {"models.b"}, "models.b": {"models.a", "storage.c"}, "storage.c": set()}
    assert cycles(graph) == [["models.a", "models.b"]]
    assert "storage" not in ALLOWED["models"]
