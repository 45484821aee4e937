"""Screenshots of the customer-success pages for the docs: ``make screenshots``.

Replays the tests' simulated shop into a private redis-server, starts ``churnwatch serve`` over it
and has headless Chromium photograph each page into docs/img/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).parent))

from live_servers import LiveRedis  # noqa: E402
from replayed_shop import END, replay_shop, shop_config, write_config  # noqa: E402
from servers import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
CHURNWATCH = str(Path(sys.executable).with_name("churnwatch"))


def shoot(profile: Path, url: str, out: Path, size: str) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed: run `make system-deps`")
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    f"--user-data-dir={profile}", f"--window-size={size}",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)
    print(f"wrote {out.relative_to(ROOT)}")


def add_interventions(url: str, work: Path) -> None:
    """CS acted on two thirds of the treated customers with an open assignment: replay
    ``intervention`` events for them, so the pages show contacts."""
    import json

    from churnwatch.state.redis_store import RedisStore

    from churnwatch.replay import replay

    config = shop_config()

    def factory() -> RedisStore:
        return RedisStore(url, config.shards, config.key_prefix, max_wait=10.0)

    store = factory()
    events = []
    for n, (cid, state) in enumerate(sorted(store.iter_customers())):
        outreach = state.outreach or {}
        if outreach.get("playbook") and not outreach.get("holdout") and n % 3:
            playbook = next(p for p in config.playbooks if p.name == outreach["playbook"])
            events.append({"customer_id": cid, "type": "intervention",
                           "ts": min(outreach["assigned_at"] + 2 * 86400, END - 3600),
                           "channel": playbook.channel, "playbook": playbook.name})
    store.close()
    path = work / "interventions.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in sorted(events, key=lambda e: e["ts"])))
    replay([str(path)], config, factory, as_of=END)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    redis = LiveRedis()
    redis.start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            replay_shop(redis.url, work)
            add_interventions(redis.url, work)
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_API")}
            server = subprocess.Popen([CHURNWATCH, "serve", "--redis-url", redis.url,
                                       "--config", str(write_config(work / "c.toml")),
                                       "--port", str(port)], env=env)
            url = f"http://127.0.0.1:{port}"
            try:
                for _ in range(100):
                    try:
                        urllib.request.urlopen(url + "/healthz", timeout=2).close()
                        break
                    except OSError:
                        time.sleep(0.2)
                first = urllib.request.urlopen(url + "/api/v1/customers?limit=1", timeout=10)
                import json

                customer = json.loads(first.read())["customers"][0]["customer_id"]
                profile = work / "profile"
                shoot(profile, url + "/?limit=15", OUT / "worklist.png", "1400,1000")
                shoot(profile, url + "/customers/" + quote(customer, safe=""),
                      OUT / "customer.png", "1400,1500")
                shoot(profile, url + "/segments", OUT / "segments.png", "1400,900")
                shoot(profile, url + "/?limit=5", OUT / "worklist-phone.png", "390,900")
            finally:
                server.terminate()
                server.wait(10)
        finally:
            redis.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
