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
from replayed_shop import replay_shop, write_config  # noqa: E402
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


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    redis = LiveRedis()
    redis.start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            replay_shop(redis.url, work)
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
