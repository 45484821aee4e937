"""The layout's rules, checked on the source: every folder imports only the layers the README's
map allows it ("Who may import whom"), command modules do not import the CLI, no module imports
another module's private names, and the scoring core and the judge import no adapter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("churnwatch", "dataflows", "state", "metrics", "web", "dashboards", "bench")
ADAPTERS = ("bytewax", "redis", "prometheus_client", "churnwatch.dataflows", "churnwatch.state",
            "churnwatch.metrics", "churnwatch.web", "churnwatch.dashboards")

#: Who may import whom, as the README's map says. A layer is a folder of the repository (the
#: top-level ones install as ``churnwatch.<folder>``); ``app`` is the modules directly in
#: ``churnwatch/`` (replay, export, backtest, live, publish, simulator, runtime, embedded) and
#: ``cli`` is ``churnwatch/cli.py``. Every layer may import itself; data flows one way.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "judge": frozenset({"core"}),
    "state": frozenset({"core"}),
    "dataflows": frozenset({"core", "state"}),
    "metrics": frozenset({"core", "state"}),
    "web": frozenset({"core", "state", "metrics"}),
    "dashboards": frozenset(),
    "app": frozenset({"core", "judge", "state", "dataflows", "metrics", "web"}),
    "commands": frozenset({"core", "judge", "state", "dataflows", "metrics", "web", "dashboards",
                           "app"}),
    "cli": frozenset({"core", "app", "commands"}),
    "bench": frozenset({"core", "judge", "state", "dataflows", "metrics", "web", "app"}),
}
#: Folders inside ``churnwatch/`` that are layers of their own.
INNER_LAYERS = ("core", "judge", "commands")
#: The top-level folders, installed as ``churnwatch.<folder>``.
OUTER_LAYERS = ("dataflows", "state", "metrics", "web", "dashboards")


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def imports(path: Path, source: str | None = None) -> list[tuple[str, list[str]]]:
    """Every absolute import of ``path`` (or of ``source``), at the top or inside a function,
    with its names."""
    text = path.read_text(encoding="utf-8") if source is None else source
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def layer_of_file(path: Path) -> str:
    """The layer a source file belongs to, from where it lies."""
    parts = path.relative_to(ROOT).parts
    if parts[0] != "churnwatch":
        return parts[0]
    if len(parts) > 2 and parts[1] in INNER_LAYERS:
        return parts[1]
    return "cli" if parts[1] == "cli.py" else "app"


def layer_of_module(module: str) -> str | None:
    """The layer an imported module belongs to; ``None`` for what is not the project's."""
    parts = module.split(".")
    if parts[0] == "bench":
        return "bench"
    if parts[0] != "churnwatch":
        return None
    if len(parts) == 1:
        return "app"
    if parts[1] in INNER_LAYERS or parts[1] in OUTER_LAYERS:
        return parts[1]
    return "cli" if parts[1] == "cli" else "app"


def offences_of(path: Path, layer: str, source: str | None = None) -> list[str]:
    """The imports of ``path`` (of layer ``layer``) that the map does not allow."""
    allowed = MAY_IMPORT[layer] | {layer}
    found = []
    for module, names in imports(path, source):
        # ``from churnwatch import live`` names modules: judge each, not the package.
        targets = [f"{module}.{n}" for n in names] if module == "churnwatch" and names \
            else [module]
        for target in targets:
            other = layer_of_module(target)
            if other is not None and other not in allowed:
                found.append(f"{path.relative_to(ROOT)} ({layer}): imports {target} ({other})")
    return found


def test_every_source_file_lies_in_a_layer_of_the_map() -> None:
    layers = {layer_of_file(path) for path in modules()}
    assert layers == set(MAY_IMPORT), layers ^ set(MAY_IMPORT)


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_every_folder_imports_only_the_layers_the_map_allows(layer: str) -> None:
    files = [path for path in modules() if layer_of_file(path) == layer]
    assert files, f"no file of layer {layer}: the map and the tree disagree"
    offences = [o for path in files for o in offences_of(path, layer)]
    assert offences == []


def test_the_boundary_check_finds_an_import_the_map_forbids() -> None:
    # The check itself, on a source that the map forbids three times: state reaching up to
    # metrics, to the web app through a lazy import, and to the application.
    source = ("from churnwatch.metrics.pipeline import PipelineMetrics\n"
              "from churnwatch import live\n\n\n"
              "def late() -> None:\n    import churnwatch.web.server\n")
    assert sorted(offences_of(ROOT / "state" / "probe.py", "state", source)) == [
        "state/probe.py (state): imports churnwatch.live (app)",
        "state/probe.py (state): imports churnwatch.metrics.pipeline (metrics)",
        "state/probe.py (state): imports churnwatch.web.server (web)"]
    assert offences_of(ROOT / "web" / "probe.py", "web", source) == [
        "web/probe.py (web): imports churnwatch.live (app)"]


def test_no_module_imports_the_cli_or_another_modules_private_names() -> None:
    offences = []
    for path in modules():
        name = path.relative_to(ROOT)
        for module, names in imports(path):
            if module == "churnwatch.cli" and name != Path("churnwatch/__main__.py"):
                offences.append(f"{name}: imports churnwatch.cli")
            if module.startswith(("churnwatch", *PACKAGES)):
                offences += [f"{name}: imports {module}.{n}" for n in names
                             if n.startswith("_") and not n.startswith("__")]
    assert offences == []


@pytest.mark.parametrize(("folder", "at_least"), [("core", 8), ("judge", 4)])
def test_the_scoring_core_and_the_judge_import_no_adapter(folder: str, at_least: int) -> None:
    offences = [f"{path.relative_to(ROOT)}: imports {module}"
                for path in sorted((ROOT / "churnwatch" / folder).glob("*.py"))
                for module, _ in imports(path)
                if module.split(".")[0] in ("bytewax", "redis", "prometheus_client")
                or module.startswith(ADAPTERS[3:])]
    assert offences == []
    assert len(list((ROOT / "churnwatch" / folder).glob("*.py"))) >= at_least  # it did look
