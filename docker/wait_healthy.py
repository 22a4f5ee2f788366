"""Wait until every container of the compose project is healthy (`make up` runs this).

Compose v2 has `up --wait`; v1 (`docker-compose`, what Debian packages) has not, so this asks
Docker itself: each running container's health (those with a health check), one-shot
containers (the `keys` service) exited with status 0. A container that exits with another
status, or a wait past --timeout, ends it with status 1 and that container's last log lines.

    python3 docker/wait_healthy.py --timeout 600 -- docker compose -f docker-compose.yml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def containers(compose: list[str]) -> list[dict]:
    ids = subprocess.run([*compose, "ps", "-q"], check=True, capture_output=True, text=True).stdout.split()
    if not ids:
        return []
    out = subprocess.run(["docker", "inspect", *ids], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def state_of(container: dict) -> str:
    """healthy, starting, unhealthy, done (exited 0), failed (exited otherwise), or running (no check)."""
    state = container["State"]
    if state["Status"] == "exited":
        return "done" if state["ExitCode"] == 0 else "failed"
    if state["Status"] == "restarting":
        return "restarting"
    health = state.get("Health")
    return health["Status"] if health else "running"


def name_of(container: dict) -> str:
    return container["Name"].lstrip("/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait (default 600)")
    parser.add_argument("compose", nargs="+", help="the compose command, with its -f options")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    said = ""
    while True:
        found = {name_of(c): state_of(c) for c in containers(args.compose)}
        waiting = sorted(n for n, s in found.items() if s in ("starting", "restarting", "unhealthy"))
        failed = sorted(n for n, s in found.items() if s == "failed")
        summary = ", ".join(f"{n} {s}" for n, s in sorted(found.items()))
        if summary != said:
            print(f"wait_healthy: {summary}", flush=True)
            said = summary
        if failed or (waiting and time.monotonic() > deadline) or not found:
            for name in failed or waiting:
                print(f"--- {name}: last log lines", file=sys.stderr)
                subprocess.run(["docker", "logs", "--tail", "30", name], check=False)
            why = "exited with an error" if failed else "not healthy in time" if found else "no containers"
            print(f"wait_healthy: {', '.join(failed or waiting)} {why}", file=sys.stderr)
            return 1
        if not waiting:
            return 0
        time.sleep(2)


if __name__ == "__main__":
    sys.exit(main())
