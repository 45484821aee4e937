"""The command line at its edges: a reader that goes away (`| head`), dead letters never beside a
device or a pipe, and the reason an unreadable line of a file gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis_server import redis_server, redis_url  # noqa: F401
from replayed_shop import Shop, replayed_shop, write_config  # noqa: F401

from churnwatch.core.events import InvalidEvent, decode_event
from churnwatch.simulator import ShopSimulator, write_jsonl

START = 1_600_000_000.0


def churnwatch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CHURNWATCH_REDIS_URL"}
    return subprocess.run([sys.executable, "-m", "churnwatch.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


# -- a reader that goes away -----------------------------------------------------------------

def run_into_closed_pipe(args: list[str]) -> tuple[int, str]:
    """Run ``churnwatch ARGS`` with its standard output a pipe whose reader is gone before the
    first line is written (as `| head -1` is once it has its line); exit status and stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "churnwatch.cli", *args],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def shop_args(replayed_shop: Shop, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
              ) -> list[str]:
    config = write_config(tmp_path_factory.mktemp("edges") / "churnwatch.toml")
    return ["--config", str(config), "--redis-url", replayed_shop.url]


@pytest.mark.parametrize("command", [
    ["top", "--limit", "1000", "--tier", "healthy"],
    ["top", "--json", "--limit", "1000"],
    ["status"],
    ["export", "--out", "-"],
])
def test_a_command_whose_reader_went_away_ends_quietly(command: list[str],
                                                       shop_args: list[str]) -> None:
    code, stderr = run_into_closed_pipe([*command, *shop_args])
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    assert code == 141, stderr


def test_a_reader_that_reads_one_line_and_leaves_ends_the_command_quietly(
        shop_args: list[str]) -> None:
    # The real pipeline: `churnwatch top --limit 1000 --tier healthy | head -1`.
    cmd = " ".join([sys.executable, "-m", "churnwatch.cli", "top", "--limit", "1000",
                    "--tier", "healthy", *shop_args])
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd} | head -1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.startswith("#"), proc.stdout
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 141), proc.stderr


def test_a_replay_exporting_to_standard_output_into_a_closed_pipe_ends_quietly(
        tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    shop = tmp_path / "shop.jsonl"
    write_jsonl(str(shop), ShopSimulator(customers=30, seed=5, start=START, days=90))
    code, stderr = run_into_closed_pipe(["replay", str(shop), "--redis-url", redis_url,
                                         "--export", "-"])
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert code == 141, stderr


# -- dead letters never beside a device or a pipe --------------------------------------------

def test_an_export_to_dev_null_puts_dead_letters_beside_the_input(tmp_path: Path) -> None:
    beside_null = Path("/dev/null.dead-letters.jsonl")
    existed = beside_null.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"customer_id": "a", "type": "visit", "ts": 1600000000}\nnot json\n')
    work = tmp_path / "cwd"
    work.mkdir()
    try:
        run = churnwatch("replay", str(bad), "--export", "/dev/null", cwd=work)
        assert run.returncode == 0, run.stderr
        assert existed or not beside_null.exists()
        dead = tmp_path / "bad.jsonl.dead-letters.jsonl"
        assert [json.loads(line)["position"] for line in dead.read_text().splitlines()] == \
            ["bad.jsonl:2"]
        assert str(dead) in run.stderr
    finally:
        if not existed and beside_null.exists():
            beside_null.unlink()


def test_standard_input_exported_into_a_fifo_puts_dead_letters_in_the_working_directory(
        tmp_path: Path) -> None:
    fifo = tmp_path / "scores.fifo"
    os.mkfifo(fifo)
    work = tmp_path / "cwd"
    work.mkdir()
    # A reader on the FIFO, so the export can open it.
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    env = {k: v for k, v in os.environ.items() if k != "CHURNWATCH_REDIS_URL"}
    run = subprocess.run([sys.executable, "-m", "churnwatch.cli", "replay", "-",
                          "--export", str(fifo)], input=b"nope\n", capture_output=True,
                         timeout=300, cwd=work, env=env)
    exported = reader.communicate(timeout=60)[0]
    assert run.returncode == 0, run.stderr
    assert exported.startswith(b"customer_id,")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "scores.fifo"]
    assert [p.name for p in work.iterdir()] == ["stdin.dead-letters.jsonl"]


# -- an unreadable line of a file is not JSON, whatever its bytes ---------------------------

def test_a_files_invalid_utf8_line_is_invalid_json_and_a_streams_is_invalid_msgpack() -> None:
    line = b"caf\xe9 au lait"
    in_file = decode_event(line, position="orders.jsonl:3", msgpack_allowed=False)
    on_stream = decode_event(line, position="churnwatch:events:0:1-0")
    assert isinstance(in_file, InvalidEvent) and isinstance(on_stream, InvalidEvent)
    assert (in_file.reason, in_file.detail) == ("invalid_json", "not valid UTF-8 at byte 3")
    assert on_stream.reason == "invalid_msgpack"


def test_replay_dead_letters_an_invalid_utf8_line_as_invalid_json(tmp_path: Path) -> None:
    events = tmp_path / "orders.jsonl"
    events.write_bytes(b'{"customer_id": "a", "type": "visit", "ts": 1600000000}\n'
                       b"\xff\xfe not text\n"
                       b"caf\xe9\n")
    run = churnwatch("replay", str(events), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    dead = [json.loads(line) for line in
            (tmp_path / "orders.jsonl.dead-letters.jsonl").read_text().splitlines()]
    assert [(d["position"], d["reason"]) for d in dead] == \
        [("orders.jsonl:2", "invalid_json"), ("orders.jsonl:3", "invalid_json")]
    assert all("not valid UTF-8" in d["detail"] for d in dead)
