"""How the docker profile's router reaches Swarm replicas, and how the analysis reads them.

`ReplicaSplit` spreads each track's weight over its replicas' addresses in the Caddy config that
caddy.py builds; `SwarmSampleSource` merges the samples of every replica of a track.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.mlops.canary.analysis import Samples
from include.mlops.deploy import caddy
from include.mlops.deploy.target import Backend
from include.mlops.errors import DeployError

if TYPE_CHECKING:
    from include.mlops.deploy.swarm import SwarmTarget


@dataclass(frozen=True)
class ReplicaSplit(caddy.Split):
    """caddy.Split over tracks, each track spread evenly over its replicas' dial addresses.

    `upstreams` names tracks with their weights; the track cycle (e.g. S S S C at 25 %) is
    repeated lcm(replica counts) times and each track's slots take its replicas in turn, so every
    replica of a track gets the same share and the tracks keep their exact weights.
    """

    replicas: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def rotation(self) -> list[str]:
        cycle = caddy.Split(self.upstreams).rotation()
        dials = dict(self.replicas)
        turns = math.lcm(*(len(dials[t]) for t in set(cycle)))
        used = dict.fromkeys(dials, 0)
        out = []
        for _ in range(turns):
            for track in cycle:
                out.append(dials[track][used[track] % len(dials[track])])
                used[track] += 1
        return out


class SwarmSampleSource:
    """A track's samples: every running replica's /samples, merged (the analysis sees the whole track)."""

    def __init__(self, target: SwarmTarget, timeout_s: float = 5.0) -> None:
        self.target = target
        self.timeout_s = timeout_s

    def fetch(self, backend: Backend, since_unix: float) -> Samples:
        import httpx

        from include.mlops.canary.runner import ProbeError

        urls = self.target.replica_urls(backend)
        parts, errors = [], []
        for url in urls:
            try:
                r = httpx.get(f"{url}/samples", params={"since": since_unix}, timeout=self.timeout_s)
                r.raise_for_status()
                parts.append(r.json())
            except (httpx.HTTPError, ValueError) as exc:
                errors.append(f"{url}: {exc}")
        if not parts:  # one replica down is Swarm's to replace; none answering is a probe error
            raise ProbeError(
                f"cannot read samples of {backend.name} v{backend.version} from its replicas "
                f"{urls or '(none running)'}: {'; '.join(errors)}"
            )
        keys = ("ts", "latency_ms", "status", "mean_prediction", "non_finite")
        rows = sorted(zip(*([x for p in parts for x in p.get(k, ())] for k in keys), strict=True), key=lambda r: r[0])
        return Samples.from_dict({k: [row[i] for row in rows] for i, k in enumerate(keys)})


# Caddy's active checks give a server 400 ms (caddy.HEALTH_TIMEOUT): right for the local profile's
# processes, but a replica capped at half a core answered in over 400 ms while two others loaded
# their model, and with every replica marked down at once the router answered 503 "no upstreams
# available" (16 requests in one promotion). Swarm's own healthcheck takes a hung replica out;
# Caddy's passive checks still drop a refused or failing replica on the first error.
ACTIVE_HEALTH_TIMEOUT = "2s"


def proxy_handler(split: ReplicaSplit) -> dict[str, Any]:
    handler = caddy.proxy_handler(split)
    handler["health_checks"]["active"]["timeout"] = ACTIVE_HEALTH_TIMEOUT
    return handler


def router_config(http_port: int, admin_port: int, split: ReplicaSplit) -> dict[str, Any]:
    config = caddy.caddy_config(http_port, admin_port, split)
    config["apps"]["http"]["servers"]["router"]["routes"] = [{"handle": [proxy_handler(split)]}]
    return config


def patch_handler(admin_port: int, handler: dict[str, Any], timeout_s: float = 10.0) -> None:
    """Replace the proxy handler through Caddy's admin API (in-flight requests finish on the old one)."""
    import httpx

    url = f"http://127.0.0.1:{admin_port}/id/{caddy.PROXY_ID}"
    try:
        resp = httpx.patch(url, json=handler, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DeployError(f"Caddy admin API at {url} unreachable: {exc}") from exc
    if resp.status_code != 200:
        raise DeployError(f"Caddy refused the new weights ({resp.status_code}): {resp.text[:300]}")


def drain(urls: list[str], timeout_s: float) -> None:
    """Wait until no replica has a request in flight (the router no longer sends it any), bounded."""
    import httpx

    deadline = time.monotonic() + timeout_s
    time.sleep(0.05)
    with httpx.Client(timeout=2.0) as client:
        for url in urls:
            while time.monotonic() < deadline:
                try:
                    if client.get(f"{url}/info").json().get("in_flight", 0) <= 0:
                        break
                except (httpx.HTTPError, ValueError):
                    break
                time.sleep(0.02)
