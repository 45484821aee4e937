"""The churnwatch command: replay, export, backtest and their error paths, as a user runs them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.simulator import ShopSimulator, write_jsonl

START = 1_600_000_000.0


def churnwatch(*args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "churnwatch.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shop") / "shop.jsonl"
    write_jsonl(str(path), ShopSimulator(customers=150, seed=11, start=START, days=500))
    with open(path, "a") as f:
        f.write("this is not json\n")
        f.write('{"customer_id": "c", "type": "order", "ts": "2024-01-01T00:00:00"}\n')
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_replay_exports_scores_and_a_second_replay_changes_nothing(shop: Path, tmp_path: Path,
                                                                   redis_url: str) -> None:
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    dead = tmp_path / "dead.jsonl"
    as_of = str(START + 520 * 86400)
    run = churnwatch("replay", str(shop), "--redis-url", redis_url, "--as-of", as_of,
                     "--export", str(first), "--dead-letters-out", str(dead))
    assert run.returncode == 0, run.stderr
    rows = read_csv(first)
    assert len(rows) == 150
    assert list(rows[0])[:3] == ["customer_id", "health_score", "tier"]
    assert {"recency", "trend", "engagement", "service", "reasons"} <= set(rows[0])
    assert all(0 <= float(r["health_score"]) <= 100 for r in rows)
    assert {r["tier"] for r in rows} <= {"healthy", "watch", "at_risk", "churned"}
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert sorted(d["reason"] for d in letters) == ["invalid_field", "invalid_json"]
    assert all(d["position"].startswith("shop.jsonl:") for d in letters)
    again = churnwatch("replay", str(shop), "--redis-url", redis_url, "--as-of", as_of,
                       "--export", str(second))
    assert again.returncode == 0, again.stderr
    assert read_csv(second) == rows


def test_replay_without_a_redis_url_uses_a_private_embedded_redis(shop: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    env = {k: v for k, v in __import__("os").environ.items() if k != "CHURNWATCH_REDIS_URL"}
    run = churnwatch("replay", str(shop), "--export", str(out), env=env)
    assert run.returncode == 0, run.stderr
    assert len(read_csv(out)) == 150


def test_silent_customers_fall_as_the_as_of_clock_advances(shop: Path, tmp_path: Path,
                                                           redis_url: str) -> None:
    near, far = tmp_path / "near.csv", tmp_path / "far.csv"
    assert churnwatch("replay", str(shop), "--redis-url", redis_url, "--as-of",
                      str(START + 500 * 86400), "--export", str(near)).returncode == 0
    assert churnwatch("replay", str(shop), "--redis-url", redis_url, "--as-of",
                      str(START + 900 * 86400), "--export", str(far)).returncode == 0
    a = {r["customer_id"]: float(r["health_score"]) for r in read_csv(near)}
    b = {r["customer_id"]: float(r["health_score"]) for r in read_csv(far)}
    assert all(b[c] <= a[c] for c in a)
    assert sum(r["tier"] == "churned" for r in read_csv(far)) > sum(
        r["tier"] == "churned" for r in read_csv(near))


def test_backtest_reports_auc_tiers_lift_and_the_recency_baseline(shop: Path,
                                                                  redis_url: str) -> None:
    run = churnwatch("backtest", str(shop), "--cutoff", str(START + 250 * 86400),
                     "--horizon", "120", "--json", "--redis-url", redis_url)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["customers"] > 50
    assert 0.5 < report["roc_auc"] <= 1.0
    assert 0.0 <= report["recency_baseline_roc_auc"] <= 1.0
    assert set(report["tiers"]) == {"healthy", "watch", "at_risk", "churned"}
    assert "top_decile_lift" in report


def test_bad_configuration_is_reported_with_key_and_file_before_any_event(
        shop: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[tiers]\nhealthy = 'high'\n")
    run = churnwatch("replay", str(shop), "--config", str(config))
    assert run.returncode == 2
    assert f"{config}: tiers.healthy must be a number" in run.stderr
    config.write_text("[scoring]\nhorizon = 90\n")
    run = churnwatch("replay", str(shop), "--config", str(config))
    assert run.returncode == 2 and "unknown key scoring.horizon" in run.stderr


@pytest.mark.parametrize("args, message", [
    (["replay", "missing.jsonl"], "no such file: missing.jsonl"),
    (["replay", "{shop}", "--as-of", "next tuesday"], "--as-of"),
    (["backtest", "{shop}", "--cutoff", "2020-01-01T00:00:00Z", "--horizon", "-5"],
     "--horizon must be a positive number"),
])
def test_bad_arguments_fail_with_a_clear_message(shop: Path, args: list[str],
                                                 message: str) -> None:
    run = churnwatch(*[a.replace("{shop}", str(shop)) for a in args])
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    run = churnwatch("--version")
    assert run.returncode == 0
    assert run.stdout.strip() == f"churnwatch {version('churnwatch')}"


def test_every_simulate_option_is_described_with_its_default() -> None:
    run = churnwatch("simulate", "--help")
    assert run.returncode == 0
    entries = {}  # each option's entry in the help: from "  --name" to the next one
    for entry in run.stdout.split("\n  --")[1:]:
        name, _, rest = entry.partition(" ")
        entries["--" + name.strip()] = " ".join(rest.split())
    for option, default in [("--out", "default: -"), ("--customers", "default: 300"),
                            ("--days", "default: 365.0"), ("--seed", "default: 1"),
                            ("--start", "default: DAYS before now"),
                            ("--publish", "default: write a file"),
                            ("--seconds-per-day", "default: 0.0")]:
        assert default in entries[option], (option, entries[option])


@pytest.mark.parametrize("args, message", [
    (["--customers", "-5"], "--customers must be a positive whole number, got -5"),
    (["--customers", "0"], "--customers must be a positive whole number, got 0"),
    (["--days", "-1"], "--days must be a positive number of days, got -1"),
    (["--seconds-per-day", "-2"], "--seconds-per-day must be 0 or more, got -2"),
    (["--start", "last year"], "--start: value is not an RFC 3339 time: 'last year'"),
])
def test_bad_simulate_options_are_one_line_errors(args: list[str], message: str) -> None:
    run = churnwatch("simulate", *args)
    assert run.returncode == 2
    assert run.stderr.strip() == f"churnwatch: error: {message}"
    assert run.stdout == ""


def test_simulate_start_takes_rfc_3339_and_epoch_seconds_alike() -> None:
    common = ["simulate", "--customers", "5", "--days", "30"]
    rfc = churnwatch(*common, "--start", "2020-09-13T12:26:40Z")
    epoch = churnwatch(*common, "--start", str(START))
    assert rfc.returncode == 0 and epoch.returncode == 0, rfc.stderr + epoch.stderr
    assert rfc.stdout == epoch.stdout != ""
    first = json.loads(rfc.stdout.splitlines()[0])
    assert START <= first["ts"] < START + 30 * 86400


def test_replay_runs_the_garbage_collector_less_often(shop: Path, redis_url: str) -> None:
    # A quarter of a replay's time went to CPython's cyclic collector at its defaults
    # (docs/benchmarks.md): the streaming commands set it aside for what was loaded at start
    # and collect less often.
    code = ("import gc, sys; from churnwatch.cli import main; code = main(sys.argv[1:]); "
            "print(code, gc.get_threshold()[0], gc.get_freeze_count() > 0)")
    run = subprocess.run([sys.executable, "-c", code, "replay", str(shop), "--redis-url",
                          redis_url], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", "50000", "True"]
