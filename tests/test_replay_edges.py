"""`replay` and `backtest` at the edges a new user meets: bad lines, gzip, standard input, a
horizon or an --as-of past the data, and what the end-of-run summary and progress bar say."""

from __future__ import annotations

import csv
import gzip
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from churnwatch.dataflows.file_source import FileSource
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis_server import redis_server, redis_url  # noqa: F401

from churnwatch.judge.report import CustomerOutcome, build_report
from churnwatch.simulator import ShopSimulator, write_jsonl

START = 1_600_000_000.0
DAY = 86400.0
CUSTOMERS = 150
SUMMARY_LINE = re.compile(r"^  ([a-z/ -]+?)\s+([\d,.]+)\b(.*)$")


def churnwatch(*args: str, stdin: bytes | None = None, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "churnwatch.cli", *args], input=stdin,
                            capture_output=True, timeout=300, cwd=cwd, env=env)
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode(), result.stderr.decode())


def without_redis_url() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "CHURNWATCH_REDIS_URL"}


def summary_of(stderr: str) -> dict[str, tuple[float, str]]:
    """The end-of-run summary's figures (and the note after each) by label."""
    out = {}
    for line in stderr.splitlines():
        match = SUMMARY_LINE.match(line)
        if match:
            out[match[1]] = (float(match[2].replace(",", "")), match[3].strip())
    return out


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A simulated shop followed by two unreadable lines, a duplicate, a late event (within the
    allowed lateness) and one too late to apply: what each should count as is known."""
    path = tmp_path_factory.mktemp("edges") / "shop.jsonl"
    write_jsonl(str(path), ShopSimulator(customers=CUSTOMERS, seed=7, start=START, days=400))
    lines = path.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    newest = max(e["ts"] for e in events)
    customer = events[-1]["customer_id"]
    last = max(e["ts"] for e in events if e["customer_id"] == customer)
    extra = [
        "this is not json",
        json.dumps({"customer_id": "c", "type": "order", "ts": "2024-01-01T00:00:00"}),
        lines[-1],  # the same event again: a duplicate by its event id
        json.dumps({"customer_id": customer, "type": "visit", "ts": last - 3600,
                    "event_id": "late-1"}),
        json.dumps({"customer_id": customer, "type": "visit", "ts": last - 3700 * DAY,
                    "event_id": "too-late-1"}),
    ]
    path.write_text("\n".join(lines + extra) + "\n")
    return {"path": path, "events": len(lines), "newest": newest,
            "bad_lines": {len(lines) + 1, len(lines) + 2, len(lines) + 5}}


def gzipped(source: Path, target: Path) -> Path:
    target.write_bytes(gzip.compress(source.read_bytes()))
    return target


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


# -- the summary, counted from the flow ------------------------------------------------------

def test_replay_ends_with_a_summary_of_what_the_flow_did(history: dict, tmp_path: Path,
                                                         redis_url: str) -> None:
    export, transitions = tmp_path / "scores.csv", tmp_path / "transitions.jsonl"
    run = churnwatch("replay", str(history["path"]), "--redis-url", redis_url, "--export",
                     str(export), "--transitions-out", str(transitions))
    assert run.returncode == 0, run.stderr
    figures = summary_of(run.stderr)
    n = history["events"]
    assert figures["events read"][0] == n + 5
    assert figures["applied"][0] == n + 1  # every simulated event and the late one
    assert figures["duplicates"][0] == 1
    assert figures["late"][0] == 1
    assert figures["dead-lettered"][0] == 3  # two unreadable lines and the one too late
    assert figures["transitions"][0] == len(transitions.read_text().splitlines()) > 0
    assert figures["customers"][0] == CUSTOMERS == len(read_csv(export))
    assert figures["seconds"][0] > 0 and figures["events/s"][0] > 0
    # Dead letters default to a file beside the export, and the summary says so.
    dead = Path(f"{export}.dead-letters.jsonl")
    assert str(dead) in figures["dead-lettered"][1]
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    assert sorted(d["reason"] for d in letters) == ["invalid_field", "invalid_json", "too_late"]
    assert {int(d["position"].split(":")[1]) for d in letters} == history["bad_lines"]
    assert all(d["position"].startswith("shop.jsonl:") for d in letters)


def test_a_chosen_dead_letter_file_is_named_and_no_default_file_is_written(
        history: dict, tmp_path: Path, redis_url: str) -> None:
    chosen, export = tmp_path / "bad.jsonl", tmp_path / "scores.csv"
    run = churnwatch("replay", str(history["path"]), "--redis-url", redis_url,
                     "--export", str(export), "--dead-letters-out", str(chosen))
    assert run.returncode == 0, run.stderr
    assert f"appended to {chosen}" in summary_of(run.stderr)["dead-lettered"][1]
    assert len(chosen.read_text().splitlines()) == 3
    assert not Path(f"{export}.dead-letters.jsonl").exists()


def test_with_the_private_redis_dead_letters_outlive_it_beside_the_input(
        history: dict, tmp_path: Path) -> None:
    copy = tmp_path / "orders.jsonl"
    copy.write_bytes(Path(history["path"]).read_bytes())
    run = churnwatch("replay", str(copy), env=without_redis_url())
    assert run.returncode == 0, run.stderr
    dead = tmp_path / "orders.jsonl.dead-letters.jsonl"
    assert str(dead) in summary_of(run.stderr)["dead-lettered"][1]
    assert len(dead.read_text().splitlines()) == 3
    # A second run replaces the file rather than appending to it.
    assert churnwatch("replay", str(copy), env=without_redis_url()).returncode == 0
    assert len(dead.read_text().splitlines()) == 3


def test_a_clean_file_leaves_no_dead_letter_file(tmp_path: Path) -> None:
    clean = tmp_path / "clean.jsonl"
    write_jsonl(str(clean), ShopSimulator(customers=20, seed=3, start=START, days=60))
    run = churnwatch("replay", str(clean), "--export", str(tmp_path / "s.csv"),
                     env=without_redis_url())
    assert run.returncode == 0, run.stderr
    assert summary_of(run.stderr)["dead-lettered"] == (0.0, "")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean.jsonl", "s.csv"]


# -- gzip and standard input -----------------------------------------------------------------

def test_gzip_is_recognised_by_its_bytes_and_replays_like_the_plain_file(
        history: dict, tmp_path: Path, redis_url: str) -> None:
    plain_csv, gz_csv, odd_csv = (tmp_path / n for n in ("plain.csv", "gz.csv", "odd.csv"))
    as_of = str(history["newest"] + 30 * DAY)
    assert churnwatch("replay", str(history["path"]), "--redis-url", redis_url, "--as-of",
                      as_of, "--export", str(plain_csv)).returncode == 0
    import redis

    redis.Redis.from_url(redis_url).flushall()
    gz = gzipped(Path(history["path"]), tmp_path / "shop.jsonl.gz")
    run = churnwatch("replay", str(gz), "--redis-url", redis_url, "--as-of", as_of,
                     "--export", str(gz_csv))
    assert run.returncode == 0, run.stderr
    assert read_csv(gz_csv) == read_csv(plain_csv)
    assert summary_of(run.stderr)["dead-lettered"][0] == 3
    letters = Path(f"{gz_csv}.dead-letters.jsonl").read_text().splitlines()
    assert {json.loads(d)["position"] for d in letters} == {
        f"shop.jsonl.gz:{n}" for n in history["bad_lines"]}
    # A gzip stream whose name says nothing about it.
    redis.Redis.from_url(redis_url).flushall()
    odd = tmp_path / "export.dat"
    odd.write_bytes(gz.read_bytes())
    run = churnwatch("replay", str(odd), "--redis-url", redis_url, "--as-of", as_of,
                     "--export", str(odd_csv))
    assert run.returncode == 0, run.stderr
    assert read_csv(odd_csv) == read_csv(plain_csv)


def test_standard_input_replays_like_the_file_plain_or_gzipped(
        history: dict, tmp_path: Path) -> None:
    data = Path(history["path"]).read_bytes()
    from_file = churnwatch("replay", str(history["path"]), "--export", "-",
                           env=without_redis_url())
    for payload in (data, gzip.compress(data)):
        run = churnwatch("replay", "-", "--export", "-", stdin=payload, cwd=tmp_path,
                         env=without_redis_url())
        assert run.returncode == 0, run.stderr
        assert run.stdout == from_file.stdout
        assert summary_of(run.stderr)["events read"][0] == history["events"] + 5
        letters = (tmp_path / "stdin.dead-letters.jsonl").read_text().splitlines()
        assert {json.loads(d)["position"] for d in letters} == {
            f"stdin:{n}" for n in history["bad_lines"]}


def test_a_truncated_gzip_is_an_error_naming_the_file_and_line(history: dict,
                                                               tmp_path: Path) -> None:
    data = gzip.compress(Path(history["path"]).read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    run = churnwatch("replay", str(cut), "--export", str(tmp_path / "s.csv"),
                     env=without_redis_url())
    assert run.returncode == 2
    assert re.search(r"error: cut\.jsonl\.gz: unreadable after line \d+", run.stderr)
    assert "Traceback" not in run.stderr and "panicked" not in run.stderr
    assert not (tmp_path / "s.csv").exists()
    run = churnwatch("backtest", str(cut), "--cutoff", str(START + 100 * DAY), "--horizon",
                     "30", env=without_redis_url())
    assert run.returncode == 2 and "cut.jsonl.gz: unreadable after line" in run.stderr
    assert "Traceback" not in run.stderr


def test_backtest_reads_gzip_and_standard_input_and_keeps_the_users_positions(
        history: dict, tmp_path: Path, redis_url: str) -> None:
    args = ["--cutoff", str(START + 200 * DAY), "--horizon", "90", "--json"]
    plain = churnwatch("backtest", str(history["path"]), *args, "--redis-url", redis_url)
    assert plain.returncode == 0, plain.stderr
    gz = gzipped(Path(history["path"]), tmp_path / "orders.jsonl.gz")
    from_gz = churnwatch("backtest", str(gz), *args, env=without_redis_url())
    assert from_gz.returncode == 0, from_gz.stderr
    assert json.loads(from_gz.stdout) == json.loads(plain.stdout)
    figures = summary_of(from_gz.stderr)
    assert 0 < figures["events read"][0] < history["events"]
    letters = Path(f"{gz}.dead-letters.jsonl").read_text().splitlines()
    assert figures["dead-lettered"][0] == len(letters) >= 2
    # Lines after the cut-off are not replayed, yet positions are the user's file's lines.
    assert {f"orders.jsonl.gz:{n}" for n in sorted(history["bad_lines"])[:2]} <= {
        json.loads(d)["position"] for d in letters}
    from_stdin = churnwatch("backtest", "-", *args, stdin=gz.read_bytes(), cwd=tmp_path,
                            env=without_redis_url())
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout) == json.loads(plain.stdout)


# -- refusing to answer past the data --------------------------------------------------------

def test_backtest_whose_horizon_runs_past_the_newest_event_is_refused(history: dict) -> None:
    newest = history["newest"]
    run = churnwatch("backtest", str(history["path"]), "--cutoff",
                     str(newest - 30 * DAY), "--horizon", "90", env=without_redis_url())
    assert run.returncode == 2
    stamp = _iso(int(newest))  # event times are whole seconds
    assert f"after the newest event in {history['path']} ({stamp})" in run.stderr
    assert "ROC AUC" not in run.stdout and "Traceback" not in run.stderr
    # A horizon ending within the newest event's day is covered (day-resolution logs).
    run = churnwatch("backtest", str(history["path"]), "--cutoff",
                     str(newest - 89.5 * DAY), "--horizon", "90", env=without_redis_url())
    assert run.returncode == 0, run.stderr
    # Just inside the data: answered.
    run = churnwatch("backtest", str(history["path"]), "--cutoff",
                     str(newest - 91 * DAY), "--horizon", "90", env=without_redis_url())
    assert run.returncode == 0, run.stderr


def test_replay_as_of_before_the_newest_event_names_both_times(history: dict,
                                                               tmp_path: Path) -> None:
    newest = history["newest"]
    export = tmp_path / "s.csv"
    run = churnwatch("replay", str(history["path"]), "--as-of", str(newest - 10 * DAY),
                     "--export", str(export), env=without_redis_url())
    assert run.returncode == 2
    assert (f"--as-of {_iso(newest - 10 * DAY)} is earlier than the newest event replayed, "
            f"{_iso(int(newest))}") in run.stderr
    assert not export.exists() and "Traceback" not in run.stderr
    # What was read is still told, and where its dead letters went.
    figures = summary_of(run.stderr)
    assert figures["events read"][0] == history["events"] + 5
    assert "silent moves" not in figures
    dead = Path(f"{export}.dead-letters.jsonl")
    assert str(dead) in figures["dead-lettered"][1] and dead.exists()


def _iso(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


# -- reports ---------------------------------------------------------------------------------

def test_an_empty_tier_shows_a_dash_and_null_not_nan() -> None:
    report = build_report([
        CustomerOutcome(health_score=90.0, tier="healthy", return_probability=0.8,
                        days_since_last_order=3.0, orders=4, churned=False),
        CustomerOutcome(health_score=40.0, tier="at_risk", return_probability=0.2,
                        days_since_last_order=90.0, orders=1, churned=True)], horizon_days=90.0)
    text = report.render()
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()
            if line.split() and line.split()[0] in ("healthy", "watch", "at_risk", "churned")}
    assert rows["watch"] == ["0", "-"] and rows["churned"] == ["0", "-"]
    assert rows["healthy"] == ["1", "0.0%"] and rows["at_risk"] == ["1", "100.0%"]
    assert "nan" not in text
    data = json.loads(json.dumps(report.as_dict(), allow_nan=False))
    assert data["tiers"]["watch"] == {"customers": 0, "churn_share": None}


# -- the progress bar ------------------------------------------------------------------------

def run_on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run the command with its standard error (and input and output) on a pseudo-terminal."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(cwd)
        env = without_redis_url()
        os.execve(sys.executable, [sys.executable, "-m", "churnwatch.cli", *args], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def long_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("long") / "long.jsonl"
    write_jsonl(str(path), ShopSimulator(customers=1500, seed=5, start=START, days=365))
    return path


def test_a_long_replay_shows_a_progress_bar_on_a_terminal_only(long_history: Path,
                                                               tmp_path: Path) -> None:
    code, screen = run_on_a_terminal(["replay", str(long_history)], tmp_path)
    assert code == 0, screen
    assert re.search(r"replaying:\s+\d+%\|.*\| [\d.]+k/[\d.]+k", screen), screen[:2000]
    assert "events read" in screen
    piped = churnwatch("replay", str(long_history), env=without_redis_url())
    assert piped.returncode == 0
    assert "replaying" not in piped.stderr and "\r" not in piped.stderr
    assert "events read" in piped.stderr


def test_a_long_backtest_shows_a_progress_bar_on_a_terminal(long_history: Path,
                                                            tmp_path: Path) -> None:
    code, screen = run_on_a_terminal(["backtest", str(long_history), "--cutoff",
                                      str(START + 250 * DAY), "--horizon", "90"], tmp_path)
    assert code == 0, screen
    assert re.search(r"replaying:\s+\d+%\|", screen), screen[:2000]
    assert "ROC AUC" in screen


# -- reading bytes from outside --------------------------------------------------------------

lines_strategy = st.lists(st.binary(max_size=60).map(
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"")), max_size=30)


def read_through_the_source(paths: list[str], labels: dict[str, str] | None = None) -> list:
    flow = Dataflow("read")
    out: list = []
    op.output("out", op.input("in", flow, FileSource(paths, batch_size=7, labels=labels)),
              TestingSink(out))
    run_main(flow)
    return out


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=lines_strategy)
# Found by hypothesis: a plain file whose first line starts with gzip's magic bytes.
@example(lines=[b"\x1f\x8b"])
@example(lines=[b"\x1f\x8b\x08\x00garbage"])
def test_any_bytes_read_the_same_plain_and_gzipped(tmp_path: Path, lines: list[bytes]) -> None:
    plain, packed = tmp_path / "in.jsonl", tmp_path / "in.bin"
    plain.write_bytes(b"".join(line + b"\n" for line in lines))
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a = read_through_the_source([str(plain)])
    b = read_through_the_source([str(packed)], labels={str(packed): "in.jsonl"})
    assert [(m.payload, m.position, m.offset) for m in a] == \
        [(m.payload, m.position, m.offset) for m in b]
    expected = [(line.strip(), f"in.jsonl:{n}") for n, line in enumerate(lines, 1)
                if line.strip()]
    assert [(m.payload, m.position) for m in a] == expected
