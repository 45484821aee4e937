"""churnwatch benchmarks: ``python -m bench.run`` (``make bench``).

Every figure comes from data generated from a seed (:mod:`bench.workload`) and real servers
(a private redis-server on a loopback port, ``churnwatch run`` processes), so anyone can
reproduce it. What is measured (docs/benchmarks.md has the figures and the machine):

1. replay: one worker over ``--events`` mixed events for ``--customers`` customers, from the
   first event read to the export CSV written (``replay`` + ``export``), beside the yardstick
   (:mod:`bench.yardstick`: Bytewax parsing each line of the same file and counting per
   customer, in the same run) and the ratio of the two; and beside the polars batch job
   (:mod:`bench.polars_batch`: recency, frequency, spend and decayed counts per customer over
   the same file, what a nightly analytics job computes) and the ratio replay/polars;
2. naive: a consumer doing one Redis round trip per event (GET, score, SET) with the same
   scoring engine, on the first ``--naive-events`` events; and the ratio to (1);
3. memory: Redis ``used_memory`` per customer after the replay, and per kind of key;
4. live: ``churnwatch run`` (wall clock) fed at a fixed offered load: latency from XADD to the
   score committed in Redis (p50, p99), at ``--live-rate`` events/s and stepping up to the
   highest rate sustained without the backlog growing;
5. cluster: ``churnwatch run`` on ``--cluster-events`` published events, one process against two
   processes as one Bytewax cluster (and whether both end in the same state): wall time, each
   process's CPU time, the CPU-bound ratio (one process's CPU time over the busier of the two)
   and the load average, since neighbours on a shared machine move the wall time;
6. worklist: ``--worklist-customers`` scored customers written through the store's commit (the
   urgency index with them), then pages of the worklist as the API and the pages answer them
   (index ranges, the page's customers, their reasons and suggestions): p50 and p99 in ms.

Prints one JSON line with every figure (and writes it to ``var/bench/results.json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import redis
from churnwatch.state.base import StoreLayout, shard_of
from churnwatch.state.redis_store import RedisStore

from bench.polars_batch import batch_job
from bench.workload import write_jsonl
from bench.yardstick import parse_and_count
from churnwatch.core.config import ChurnwatchConfig
from churnwatch.core.engine import ShardEngine, partition_id
from churnwatch.core.events import Event, decode_event
from churnwatch.core.records import Incoming, ShardState
from churnwatch.publish import Publisher, read_lines
from churnwatch.runtime import tune_garbage_collector

ROOT = Path(__file__).resolve().parents[1]
WORKDIR = ROOT / "var" / "bench"
CHURNWATCH = str(Path(sys.executable).with_name("churnwatch"))


def log(message: str) -> None:
    """Progress on stderr (stdout carries the one JSON line)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- servers ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a loopback port, persistence off; yields its URL."""
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("redis-server not found: run `make system-deps`")
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="churnwatch-bench-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", workdir, "--daemonize", "no", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.025)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _config_file(prefix: str, **inputs: Any) -> Path:
    path = WORKDIR / f"{prefix}.toml"
    lines = ["[state]", f'key_prefix = "{prefix}"']
    if inputs:
        lines.append("[input]")
        lines += [f"{k} = {v!r}" for k, v in inputs.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# -- 1. replay ----------------------------------------------------------------------------------


class CollectorClock:
    """Time spent in CPython's cyclic garbage collector while the block runs (``gc.callbacks``),
    and how many collections of each generation it made."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    def __enter__(self) -> CollectorClock:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def bench_replay(path: Path, url: str, config: ChurnwatchConfig, events: int) -> dict[str, Any]:
    """One worker, file -> flow -> Redis -> export CSV."""
    from churnwatch.export import export_rows, state_time, write_export
    from churnwatch.replay import replay

    client = redis.Redis.from_url(url)
    client.flushall()
    baseline = int(client.info("memory")["used_memory"])

    def factory() -> RedisStore:
        return RedisStore(url, config.shards, config.key_prefix,
                          layout=StoreLayout.from_config(config))

    collecting = CollectorClock()
    started = time.perf_counter()
    with collecting:
        replay([str(path)], config, factory)
    replayed = time.perf_counter()
    store = factory()
    rows = export_rows(store, config, state_time(store))
    write_export(rows, str(WORKDIR / "export.csv"))
    finished = time.perf_counter()
    seconds = finished - started
    return {"events": events, "customers": len(rows), "seconds": round(seconds, 2),
            "replay_seconds": round(replayed - started, 2),
            "export_seconds": round(finished - replayed, 2),
            "garbage_collector_seconds": round(collecting.seconds, 2),
            "garbage_collections": collecting.collections,
            "events_per_second": round(events / seconds),
            "baseline_used_memory": baseline}


# -- 2. naive -----------------------------------------------------------------------------------


def bench_naive(path: Path, url: str, config: ChurnwatchConfig, limit: int) -> dict[str, Any]:
    """One GET and one SET per event, the same engine in between."""
    client = redis.Redis.from_url(url)
    prefix = "naive"
    engines = {s: ShardEngine(s, config, ShardState()) for s in range(config.shards)}
    pid = partition_id(f"file:{path}")
    count = 0
    started = time.perf_counter()
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if count >= limit:
                break
            count += 1
            event = decode_event(line, position=f"{path.name}:{number}", now=time.time())
            if not isinstance(event, Event):
                continue
            cid = event.customer_id
            shard = shard_of(cid, config.shards)
            key = f"{prefix}:{{s{shard}}}:c:{cid}"
            raw = client.get(key)
            from churnwatch.core.customer import CustomerState

            state = CustomerState.from_wire(msgpack.unpackb(raw, strict_map_key=False)) \
                if raw else None
            engine = engines[shard]
            result = engine.process([Incoming(event, pid, number, "")], {cid: state},
                                    engine.state.watermark)
            client.set(key, msgpack.packb(result.changed[cid].to_wire(), use_single_float=True))
    seconds = time.perf_counter() - started
    return {"events": count, "seconds": round(seconds, 2),
            "events_per_second": round(count / seconds)}


# -- 3. memory ----------------------------------------------------------------------------------


def key_family(name: str) -> str:
    """The family of a key below the prefix: ``{s3}:k:17`` (a bucket's checkpoint) ->
    ``customers``, ``{s3}:due`` -> ``due``; keys of older layouts (``{s3}:c:<bucket>`` hashes,
    ``{s3}:h:<id>``) keep their own families or count as customers."""
    parts = name.split(":")
    if not parts[0].startswith("{"):
        return name  # deadletters, deadletters:offsets
    kind = parts[1] if len(parts) > 1 else "?"
    return {"k": "customers", "c": "customers", "h": "history", "u": "urgency_index",
            "due": "due_index", "transitions": "transition_streams",
            "shard": "shard_blobs"}.get(kind, kind)


def bench_memory(url: str, config: ChurnwatchConfig, customers: int, baseline: int
                 ) -> dict[str, Any]:
    """used_memory per customer, and every key under the prefix by family (``MEMORY USAGE``
    of each key, all of its elements counted); the dead-letter stream also as it would be at
    its cap (its mean entry times ``[state] dead_letters_kept``)."""
    client = redis.Redis.from_url(url)
    used = int(client.info("memory")["used_memory"])
    prefix = config.key_prefix
    keys = [k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=10_000)]
    families: dict[str, dict[str, int]] = {}
    encodings: dict[str, int] = {}
    for start in range(0, len(keys), 5000):
        chunk = keys[start:start + 5000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.memory_usage(key, samples=0)
            pipe.object("encoding", key)
        replies = pipe.execute()
        for key, size, encoding in zip(chunk, replies[0::2], replies[1::2], strict=True):
            family = families.setdefault(key_family(key[len(prefix) + 1:]),
                                         {"keys": 0, "bytes": 0})
            family["keys"] += 1
            family["bytes"] += int(size or 0)
            if family is families.get("customers"):
                name = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
                encodings[name] = encodings.get(name, 0) + 1
    by_family = {name: {**f, "bytes_per_customer": round(f["bytes"] / max(customers, 1), 1)}
                 for name, f in sorted(families.items())}
    dead = families.get("deadletters")
    if dead:
        length = int(client.xlen(f"{prefix}:deadletters"))
        at_cap = dead["bytes"] / max(length, 1) * config.dead_letters_kept
        by_family["deadletters"]["entries"] = length
        by_family["deadletters"]["bytes_per_customer_at_cap"] = round(
            at_cap / max(customers, 1), 1)
    counted = sum(f["bytes"] for f in families.values())
    info = client.info("memory")
    return {"used_memory": used, "bytes_per_customer": round((used - baseline) / customers),
            "used_memory_dataset": int(info["used_memory_dataset"]),
            "used_memory_overhead": int(info["used_memory_overhead"]),
            "used_memory_scripts": int(info.get("used_memory_scripts", 0)),
            "keys_bytes_per_customer": round(counted / max(customers, 1)),
            "customer_bucket_encodings": encodings, "by_family": by_family}


# -- 4. live latency ------------------------------------------------------------------------------

_XADD_MANY = """
for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end
return #ARGV
"""


def _probe_customers(config: ChurnwatchConfig) -> list[str]:
    found: dict[int, str] = {}
    n = 0
    while len(found) < config.stream_partitions:
        cid = f"probe-{n}"
        found.setdefault(shard_of(cid, config.stream_partitions), cid)
        n += 1
    return [found[p] for p in range(config.stream_partitions)]


def _live_step(url: str, config: ChurnwatchConfig, rate: float, seconds: float,
               seed: int, customers: int) -> dict[str, Any]:
    """Offer ``rate`` events/s for ``seconds``; latency XADD -> committed, from probes."""
    client = redis.Redis.from_url(url)
    streams = [f"{config.stream_prefix}:{p}" for p in range(config.stream_partitions)]
    probes = _probe_customers(config)
    probe_keys = list(probes)
    xadd_many = client.register_script(_XADD_MANY)
    total = int(rate * seconds)
    rng = random.Random(seed)
    start = time.time() + 1.0 + total / 400_000  # after the payloads are made
    kinds = (b"visit", b"order", b"campaign_sent", b"campaign_opened")
    payloads: list[tuple[int, bytes]] = []
    for i in range(total):
        cid = f"c{rng.randrange(customers):07d}"
        kind = kinds[i % 4]
        ts = int(start + i / rate)
        if kind == b"order":
            body = b'{"customer_id":"%s","type":"order","ts":%d,"amount":25.0}' % (
                cid.encode(), ts)
        elif kind == b"visit":
            body = b'{"customer_id":"%s","type":"visit","ts":%d}' % (cid.encode(), ts)
        else:
            body = b'{"customer_id":"%s","type":"%s","ts":%d,"channel":"email"}' % (
                cid.encode(), kind, ts)
        payloads.append((shard_of(cid, config.stream_partitions), body))
    latencies: list[float] = []
    seen: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        # Through the store, so the probes are read wherever the layout keeps them.
        watcher = RedisStore(url, config.shards, config.key_prefix,
                             layout=StoreLayout.from_config(config))
        while not done.is_set():
            states = [watcher.customer(cid) for cid in probe_keys]
            now = time.time()
            for key, state in zip(probe_keys, states, strict=True):
                if state is None:
                    continue
                newest = max(state.offsets.values(), default=0)
                if newest > seen.get(key, 0):
                    if key in seen:
                        latencies.append(now - (newest // 1_000_000) / 1000.0)
                    seen[key] = newest
            time.sleep(0.002)
        watcher.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    while time.time() < start:
        time.sleep(0.005)
    sent = 0
    next_probe = 0.0
    while sent < total:
        elapsed = time.time() - start
        due = min(total, int(elapsed * rate) + 1)
        chunk = payloads[sent:due]
        by_partition: dict[int, list[bytes]] = {}
        for partition, body in chunk:
            by_partition.setdefault(partition, []).append(body)
        if elapsed >= next_probe:
            next_probe = elapsed + 0.05
            ts = int(time.time())
            for partition, cid in enumerate(probes):
                by_partition.setdefault(partition, []).append(
                    b'{"customer_id":"%s","type":"visit","ts":%d}' % (cid.encode(), ts))
        pipe = client.pipeline(transaction=False)
        for partition, bodies in by_partition.items():
            xadd_many(keys=[streams[partition]], args=bodies, client=pipe)
        pipe.execute()
        sent = due
        time.sleep(0.005)
    published = time.time()
    # Drain: how long until the last probe is scored (the backlog left at the end).
    final = {k: v for k, v in seen.items()}
    last_probe_ids = []
    for partition, cid in enumerate(probes):
        entry = client.xadd(streams[partition], {
            "e": b'{"customer_id":"%s","type":"visit","ts":%d}' % (cid.encode(),
                                                                  int(time.time()))})
        last_probe_ids.append(entry)
    deadline = time.time() + 120
    while time.time() < deadline:
        if all(seen.get(k, 0) >= _offset(e) for k, e in zip(probe_keys, last_probe_ids,
                                                           strict=True)):
            break
        time.sleep(0.01)
    drain = time.time() - published
    done.set()
    watcher.join(5)
    del final
    latencies.sort()
    achieved = total / max(published - start, 1e-9)

    def q(p: float) -> float | None:
        return round(latencies[min(int(p * len(latencies)), len(latencies) - 1)], 4) \
            if latencies else None

    return {"offered_per_second": rate, "achieved_offer_per_second": round(achieved),
            "seconds": seconds, "probes": len(latencies), "p50_seconds": q(0.5),
            "p99_seconds": q(0.99), "max_seconds": round(latencies[-1], 3) if latencies
            else None, "drain_seconds": round(drain, 2),
            "sustained": bool(latencies) and (q(0.99) or 99) < 1.0 and drain < 1.0}


def _offset(entry_id: bytes) -> int:
    ms, _, seq = entry_id.decode().partition("-")
    return int(ms) * 1_000_000 + int(seq)


def bench_live(url: str, rate: float, seconds: float, seed: int, customers: int,
               sweep: list[float]) -> dict[str, Any]:
    """``churnwatch run --clock wall`` in a subprocess, fed by this process."""
    config = ChurnwatchConfig(key_prefix="live")
    client = redis.Redis.from_url(url)
    client.flushall()
    log_path = WORKDIR / "live.log"
    process = subprocess.Popen(
        [CHURNWATCH, "run", "--redis-url", url, "--config", str(_config_file("live")),
         "--no-metrics"], stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        warm = _live_step(url, config, 500, 3.0, seed, customers)  # start-up, imports, JIT-less
        log(f"live warm-up: {warm}")
        at_target = _live_step(url, config, rate, seconds, seed + 1, customers)
        log(f"live at {rate:.0f}/s: {at_target}")
        steps = []
        best = None
        for step_rate in sweep:
            result = _live_step(url, config, step_rate, seconds, seed + 2 + len(steps),
                                customers)
            log(f"live at {step_rate:.0f}/s: {result}")
            steps.append(result)
            if not result["sustained"]:
                break
            best = step_rate
        return {"at_offered_load": at_target, "sweep": steps, "highest_sustained_per_second":
                best}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


# -- 5. cluster ---------------------------------------------------------------------------------


def _runqueue_seconds(index: int, pid: int) -> dict[tuple[int, str], float]:
    """Per thread of a running process, the time it has spent runnable but waiting for a CPU
    (``/proc/PID/task/TID/schedstat``, second field); empty once the process is gone."""
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                out[(index, tid)] = int(handle.read().split()[1]) / 1e9
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        pass
    return out


def bench_cluster(url: str, path: Path, events: int) -> dict[str, Any]:
    """The same published events through 1 process, then 2 processes as one cluster."""
    client = redis.Redis.from_url(url)
    client.flushall()
    config = ChurnwatchConfig()
    lines = read_lines([str(path)])
    limited = (line for n, line in enumerate(lines) if n < events)
    Publisher(url, config).publish(limited)
    results: dict[str, Any] = {"events": events}
    states = {}
    for processes in (1, 2):
        prefix = f"p{processes}"
        config_path = _config_file(prefix)
        base = [CHURNWATCH, "run", "--redis-url", url, "--config", str(config_path),
                "--clock", "event", "--stop-at-end", "--no-metrics"]
        addresses = ";".join(f"127.0.0.1:{_free_port()}" for _ in range(processes))
        started = time.perf_counter()
        procs = []
        for index in range(processes):
            extra = ["-i", str(index), "-a", addresses] if processes > 1 else []
            procs.append(subprocess.Popen(base + extra, stdout=subprocess.DEVNULL,
                                          stderr=open(WORKDIR / f"cluster-{prefix}-{index}.log",
                                                      "wb")))  # noqa: SIM115
        # wait4, not wait(): the child's own CPU time, which neighbours on a shared machine
        # disturb far less than the wall time; and how long its threads waited for a CPU.
        finished: dict[int, tuple[int, float]] = {}
        waited: dict[tuple[int, str], float] = {}
        while len(finished) < len(procs):
            for index, proc in enumerate(procs):
                if index in finished:
                    continue
                waited.update(_runqueue_seconds(index, proc.pid))
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    finished[index] = (os.waitstatus_to_exitcode(status),
                                       round(usage.ru_utime + usage.ru_stime, 2))
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        codes = [finished[i][0] for i in range(processes)]
        cpu = [finished[i][1] for i in range(processes)]
        for proc, code in zip(procs, codes, strict=True):
            proc.returncode = code
        cpu_wait = [round(sum(w for (i, _), w in waited.items() if i == index), 2)
                    for index in range(processes)]
        if any(codes):
            raise SystemExit(f"cluster run with {processes} process(es) failed: {codes}")
        results[f"processes_{processes}"] = {"seconds": round(seconds, 2),
                                             "events_per_second": round(events / seconds),
                                             "cpu_seconds": cpu,
                                             "waiting_for_a_cpu_seconds": cpu_wait,
                                             "load_average_1m": round(os.getloadavg()[0], 2)}
        store = RedisStore(url, config.shards, prefix, layout=StoreLayout.from_config(config))
        states[processes] = {cid: s.to_wire() for cid, s in store.iter_customers()}
    results["speedup"] = round(results["processes_1"]["seconds"] /
                               results["processes_2"]["seconds"], 2)
    # What the split would give with a free core per process: one process's CPU time over the
    # busier of the two (an even split of the work gives about 2; one process doing it all, 1).
    results["cpu_speedup"] = round(results["processes_1"]["cpu_seconds"][0] /
                                   max(results["processes_2"]["cpu_seconds"]), 2)
    results["same_state"] = states[1] == states[2]
    return results


# -- main ---------------------------------------------------------------------------------------


# -- 6. worklist ---------------------------------------------------------------------------------


def bench_worklist(url: str, customers: int, seed: int, pages: int = 1000) -> dict[str, Any]:
    """Build the urgency index for ``customers`` customers through ``RedisStore.commit_rows``
    (a shard's table, committed 250,000 new customers at a time), then time worklist pages."""
    from churnwatch.web.worklist import parse_worklist_query, worklist_page

    from churnwatch.core.columns import CustomerTable, set_from_state
    from churnwatch.core.customer import DAY, CustomerState

    config = ChurnwatchConfig(key_prefix="wl")
    store = RedisStore(url, config.shards, config.key_prefix,
                       layout=StoreLayout.from_config(config))
    rng = random.Random(seed)
    segments = (None, "fashion", "skincare", "electronics")
    started = time.perf_counter()
    tables = {s: CustomerTable() for s in range(config.shards)}
    new_rows: dict[int, list[int]] = {s: [] for s in range(config.shards)}
    shard_states = {s: store.load_shard(s) for s in range(config.shards)}

    def commit(shard: int) -> None:
        rows = np.array(new_rows[shard], dtype=np.int64)
        store.commit_rows(shard, shard_states[shard], tables[shard], rows, [])
        new_rows[shard] = []

    now = 1_700_000_000.0
    for n in range(customers):
        cid = f"c{n:08d}"
        state = CustomerState(first_seen=now - 400 * DAY)
        state.segment = segments[n % len(segments)]
        bought = state.purchases
        bought.orders = rng.randint(1, 12)
        bought.last_order = now - rng.uniform(1, 300) * DAY
        bought.first_order = bought.last_order - bought.orders * 20 * DAY
        bought.spend = bought.orders * 40.0
        state.score = round(rng.uniform(0, 100), 2)
        state.tier = 0 if state.score >= 60 else 1 if state.score >= 45 else (
            2 if state.score >= 32 else 3)
        state.components = [round(state.score), -1, -1, -1]
        state.scored_at = now
        state.tier_since = now - rng.uniform(0, 200) * DAY
        state.high_value = rng.random() < 0.1
        shard = shard_of(cid, config.shards)
        table = tables[shard]
        row = int(table.rows_for([cid], [state.first_seen])[0])
        set_from_state(table, row, state)
        new_rows[shard].append(row)
        if len(new_rows[shard]) >= 250_000:
            commit(shard)
    for shard, pending in new_rows.items():
        if pending:
            commit(shard)
    build_seconds = time.perf_counter() - started
    log(f"worklist: indexed {customers} customers in {build_seconds:.1f} s")
    out: dict[str, Any] = {"customers": customers, "index_build_seconds": round(build_seconds, 1),
                           "pages_timed": pages}
    queries = {
        "default_page": {"limit": ["50"]},
        "segment_high_value_page": {"segment": ["other"], "value_tier": ["high"],
                                    "limit": ["50"]},
        "page_at_offset_1000": {"limit": ["50"], "offset": ["1000"]},
    }
    gc.collect()
    out["load_average_1m"] = round(os.getloadavg()[0], 2)  # a p99 on a busy machine waits
    for name, params in queries.items():
        query = parse_worklist_query(params, config)
        worklist_page(store, config, query)  # warm the connection
        times = []
        cpu0 = time.process_time()
        for _ in range(pages):
            t0 = time.perf_counter()
            page = worklist_page(store, config, query)
            times.append((time.perf_counter() - t0) * 1000)
        cpu = (time.process_time() - cpu0) * 1000 / pages
        times.sort()
        out[name] = {"p50_ms": round(times[len(times) // 2], 2),
                     "p99_ms": round(times[min(int(len(times) * 0.99), len(times) - 1)], 2),
                     "client_cpu_ms": round(cpu, 2),
                     "rows": len(page.customers), "total": page.total}
        log(f"worklist {name}: {out[name]}")
    store.close()
    return out


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                             check=False).stdout.split()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "os": platform.platform(), "redis": next((v.split("=")[1] for v in version
                                                      if v.startswith("v=")), "?")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--naive-events", type=int, default=100_000)
    parser.add_argument("--live-rate", type=float, default=50_000)
    parser.add_argument("--live-seconds", type=float, default=8.0)
    parser.add_argument("--sweep", default="2000,4000,6000,8000,12000,16000,24000,32000",
                        help="offered loads (events/s) to step through for the highest "
                        "sustained rate")
    parser.add_argument("--cluster-events", type=int, default=300_000)
    parser.add_argument("--worklist-customers", type=int, default=1_000_000)
    parser.add_argument("--only", default="yardstick,polars,replay,naive,memory,live,cluster,"
                        "worklist",
                        help="comma-separated subset of the benchmarks")
    parser.add_argument("--gc", choices=("tuned", "default"), default="tuned",
                        help="the garbage collector settings of the in-process rows: those of "
                        "the streaming commands (tuned), or CPython's defaults, for an A/B")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    if args.gc == "tuned":
        # The collector settings of the streaming commands, for the yardstick and the
        # in-process replay alike (the live and cluster rows run `churnwatch run`, which sets
        # them itself).
        tune_garbage_collector()
    WORKDIR.mkdir(parents=True, exist_ok=True)
    path = WORKDIR / f"events-{args.events}-{args.customers}-{args.seed}.jsonl"
    if only - {"worklist"}:
        log(f"generating {args.events} events for {args.customers} customers (seed "
            f"{args.seed})")
        path = write_jsonl(path, args.events, args.customers, args.seed)
    config = ChurnwatchConfig(key_prefix="cw")
    results: dict[str, Any] = {"machine": machine(), "seed": args.seed, "gc": args.gc}
    if "yardstick" in only:
        log("1. yardstick: Bytewax parse-and-count over the same file")
        results["yardstick"] = parse_and_count(path)
        log(f"yardstick: {results['yardstick']}")
    if "polars" in only:
        log("1. polars: the batch job over the same file (read + compute)")
        results["polars"] = batch_job(path)
        log(f"polars: {results['polars']}")
    with redis_server() as url:
        if only & {"replay", "memory"}:
            log("1. replay")
            replay = bench_replay(path, url, config, args.events)
            log(f"replay: {replay}")
            results["replay"] = replay
            if "memory" in only:
                results["memory"] = bench_memory(url, config, replay["customers"],
                                                 replay.pop("baseline_used_memory"))
                log(f"memory: {results['memory']}")
            replay.pop("baseline_used_memory", None)
            if "yardstick" in results:
                replay["replay_over_yardstick"] = round(
                    replay["events_per_second"] / results["yardstick"]["events_per_second"], 3)
            if "polars" in results:
                replay["replay_over_polars"] = round(
                    replay["events_per_second"] / results["polars"]["events_per_second"], 3)
        if "naive" in only:
            log("2. naive")
            naive = bench_naive(path, url, config, args.naive_events)
            results["naive"] = naive
            if "replay" in results:
                naive["replay_over_naive"] = round(
                    results["replay"]["events_per_second"] / naive["events_per_second"], 1)
            log(f"naive: {naive}")
        if "live" in only:
            log("4. live")
            results["live"] = bench_live(url, args.live_rate, args.live_seconds, args.seed,
                                         args.customers,
                                         [float(r) for r in args.sweep.split(",") if r])
        if "cluster" in only:
            log("5. cluster")
            results["cluster"] = bench_cluster(url, path, args.cluster_events)
            log(f"cluster: {results['cluster']}")
        if "worklist" in only:
            log("6. worklist")
            results["worklist"] = bench_worklist(url, args.worklist_customers, args.seed)
    line = json.dumps(results, sort_keys=True)
    (WORKDIR / "results.json").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
