"""How the docker profile's router spreads each track's weight over its replicas, and the names and
references its Swarm services get (pure functions: no engine needed)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from include.mlops.deploy import caddy
from include.mlops.deploy import swarm_services as sv
from include.mlops.deploy.swarm_routing import ReplicaSplit
from include.mlops.errors import DeployError

S = ("10.0.0.2:8080", "10.0.0.3:8080")
C = ("10.0.0.4:8080", "10.0.0.5:8080")


def _split(canary_pct: int, stable: tuple[str, ...] = S, canary: tuple[str, ...] = C) -> ReplicaSplit:
    base = caddy.split_for("stable", "canary" if canary else None, canary_pct)
    return ReplicaSplit(base.upstreams, replicas=(("stable", stable), ("canary", canary)))


@pytest.mark.parametrize("pct", [10, 25, 50, 75, 90])
def test_each_track_keeps_its_exact_weight_and_its_replicas_share_it_evenly(pct: int) -> None:
    rotation = _split(pct).rotation()
    counts = Counter(rotation)
    canary = sum(counts[d] for d in C)
    assert 100 * canary / len(rotation) == pct
    assert counts[S[0]] == counts[S[1]] and counts[C[0]] == counts[C[1]]


def test_no_canary_routes_every_request_to_the_stable_replicas_in_turn() -> None:
    assert _split(0, canary=()).rotation() == list(S)


def test_three_stable_replicas_and_two_canary_replicas_each_get_an_equal_share_of_their_track() -> None:
    stable = ("a:1", "b:1", "c:1")
    counts = Counter(_split(25, stable=stable).rotation())
    assert len({counts[d] for d in stable}) == 1 and len({counts[d] for d in C}) == 1
    assert sum(counts[d] for d in C) * 4 == sum(counts.values())


def test_the_canary_is_spread_through_the_cycle_not_sent_in_a_block() -> None:
    rotation = _split(10).rotation()
    positions = [i for i, d in enumerate(rotation) if d in C]
    assert [b - a for a, b in itertools.pairwise(positions)] == [10]


def test_service_names_are_dns_labels_of_at_most_63_characters() -> None:
    assert sv.service_name("Fraud_Detector.v2", "canary") == "mlops-fraud-detector-v2-canary"
    long = sv.service_name("m" * 200, "stable")
    assert len(long) <= 63 and long.endswith("-stable")


def test_an_image_is_pinned_by_digest_and_a_tag_is_refused_naming_it() -> None:
    digest = "sha256:" + "ab" * 32
    assert sv.image_reference("127.0.0.1:5001", "fraud-detector", digest) == f"127.0.0.1:5001/fraud-detector@{digest}"
    with pytest.raises(DeployError, match="'latest' of fraud-detector is not a sha256 digest"):
        sv.image_reference("127.0.0.1:5001", "fraud-detector", "latest")
