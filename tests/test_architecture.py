"""The folders stack as ARCHITECTURE.md says: no upward imports, no cycles between folders, envs and the
client are leaves. Read from the source (ast), so a violation fails here before it hides anywhere."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Layer of each part of fm_agent: a module may import its own layer's folders and lower layers only.
LAYERS = {
    "attention": 0,
    "jobs": 0,
    "model": 1,
    "serving": 2,
    "v1": 2,
    "distributed": 3,
    "data": 4,
    "training": 4,
    "evaluation": 4,
    "profiling": 4,
    "cli": 5,
}


def imports(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved against ``package``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return found


def package_of(path: Path, root: Path, top: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join([top, *parts[:-1]] if path.name != "__init__.py" else [top, *parts[:-1]])


def part(module: str) -> str | None:
    names = module.split(".")
    return names[1] if names[0] == "fm_agent" and len(names) > 1 else None


def test_envs_and_the_client_import_nothing_of_fm_agent() -> None:
    for folder, top in ((ROOT / "envs", "envs"), (ROOT / "client/src/fm_agent_client", "fm_agent_client")):
        for path in folder.rglob("*.py"):
            bad = {m for m in imports(path, package_of(path, folder, top)) if m.split(".")[0] == "fm_agent"}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_fm_agent_folders_import_only_their_layer_and_below_without_cycles() -> None:
    folder = ROOT / "fm_agent"
    graph: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        here = part(package_of(path, folder, "fm_agent") + "." + path.stem)
        if here is None or here == "__init__":
            continue
        assert here in LAYERS, f"fm_agent/{here} has no layer: add it to LAYERS and ARCHITECTURE.md"
        for module in imports(path, package_of(path, folder, "fm_agent")):
            there = part(module)
            if there is None or there == here or there not in LAYERS:
                continue
            assert LAYERS[there] <= LAYERS[here], f"{path.relative_to(ROOT)} ({here}) imports {module} ({there})"
            graph.setdefault(here, set()).add(there)
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as error:
        raise AssertionError(f"folders import each other in a cycle: {error.args[1]}") from None
