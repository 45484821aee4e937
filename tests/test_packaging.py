"""What a user installs: the wheel carries its data files without packaging warnings and runs
from a fresh virtual environment holding the runtime dependencies only; `make demo` installs
that runtime, `make test` the test extras on top, also after `make demo`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA_FILES = ("churnwatch/data/demo.toml", "churnwatch/metrics/rules/alerts.yml",
              "churnwatch/metrics/alertmanager/alertmanager.yml",
              "churnwatch/web/templates/worklist.html",
              "churnwatch/dashboards/json/churnwatch-overview.json", "churnwatch/py.typed")
TEST_ONLY = ("ruff", "mypy", "hypothesis", "pytest", "grafana-foundation-sdk")


def source_copy(target: Path) -> Path:
    """The repository's files (tracked or new, not ignored) copied to ``target``, so a build
    leaves nothing in the shared checkout."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in listed.splitlines():
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.mark.slow
def test_the_wheel_installs_in_a_fresh_venv_and_replays_with_the_runtime_only(
        tmp_path: Path) -> None:
    source = source_copy(tmp_path / "src")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                            str(source), "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    log = built.stdout + built.stderr
    assert "is absent from the `packages` configuration" not in log, \
        [line for line in log.splitlines() if "absent from" in line]
    (wheel,) = (tmp_path / "dist").glob("churnwatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(DATA_FILES) <= names, set(DATA_FILES) - names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    frozen = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze"],
                            capture_output=True, text=True, check=True).stdout.lower()
    assert not [p for p in TEST_ONLY if f"\n{p}==" in "\n" + frozen], frozen

    env = {k: v for k, v in os.environ.items()
           if k not in ("CHURNWATCH_REDIS_URL", "PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "work"
    work.mkdir()
    command = str(venv / "bin" / "churnwatch")
    demo = subprocess.run([command, "demo", "--help"], capture_output=True, text=True,
                          cwd=work, env=env, timeout=120)
    assert demo.returncode == 0 and "usage: churnwatch demo" in demo.stdout, demo.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import churnwatch.web.pages, churnwatch; "
                            "print(churnwatch.__file__)"],
                           capture_output=True, text=True, cwd=work, env=env, timeout=120)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    simulate = subprocess.run([command, "simulate", "--customers", "15", "--days", "60",
                               "--out", "shop.jsonl"], capture_output=True, text=True,
                              cwd=work, env=env, timeout=120)
    assert simulate.returncode == 0, simulate.stderr
    replay = subprocess.run([command, "replay", "shop.jsonl", "--export", "scores.csv"],
                            capture_output=True, text=True, cwd=work, env=env, timeout=300)
    assert replay.returncode == 0, replay.stderr
    rows = (work / "scores.csv").read_text().splitlines()
    assert rows[0].startswith("customer_id,") and len(rows) == 16


def test_make_demo_installs_the_runtime_and_make_test_the_extras_even_after_demo(
        tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)

    def planned(target: str) -> list[str]:
        run = subprocess.run(["make", "-n", target, "PYTHON=python3"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return [line for line in run.stdout.splitlines() if "pip install" in line]

    assert planned("demo")[-1].endswith("pip install -q -e .")
    assert not any("[test]" in line for line in planned("demo"))
    # As after `make demo`: the runtime's stamp is there and newer than pyproject.toml.
    stamp = tmp_path / ".venv" / "bin" / "churnwatch"
    stamp.parent.mkdir(parents=True)
    stamp.touch()
    assert planned("demo") == []
    assert planned("test") == [".venv/bin/pip install -q -e '.[test]'"]
