"""The layout's rules, checked on the source: command modules do not import the CLI, no module
imports another module's private names, and the scoring core imports no adapter."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("churnwatch", "dataflows", "state", "metrics", "dashboards")
ADAPTERS = ("bytewax", "redis", "prometheus_client", "churnwatch.dataflows", "churnwatch.state",
            "churnwatch.metrics", "churnwatch.dashboards")


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def imports(path: Path) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


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


def test_the_scoring_core_imports_no_adapter() -> None:
    offences = [f"{path.relative_to(ROOT)}: imports {module}"
                for path in sorted((ROOT / "churnwatch" / "core").glob("*.py"))
                for module, _ in imports(path)
                if module.split(".")[0] in ("bytewax", "redis", "prometheus_client")
                or module.startswith(ADAPTERS[3:])]
    assert offences == []
    assert len(list((ROOT / "churnwatch" / "core").glob("*.py"))) >= 8  # it did look
