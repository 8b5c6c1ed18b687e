"""Bad configuration fails at construction with a message naming the field."""

from __future__ import annotations

import pytest

from abuseguard import (
    AbuseGuard,
    AnonymizerRule,
    Concurrency,
    ConfigError,
    Enforcement,
    Guard,
    NetworkPolicy,
    Policy,
    Quota,
    Scoring,
    TokenBucket,
)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: TokenBucket("five per fortnight"), "TokenBucket.rate"),
        (lambda: TokenBucket(-1), "TokenBucket.rate"),
        (lambda: TokenBucket(float("nan")), "TokenBucket.rate"),
        (lambda: TokenBucket(True), "TokenBucket.rate"),
        (lambda: TokenBucket("5/second", burst=0), "TokenBucket.burst"),
        (lambda: TokenBucket("5/second", cost=-2), "TokenBucket.cost"),
        (lambda: TokenBucket("5/second", cost={"/a": -1}), "TokenBucket.cost['/a']"),
        (lambda: TokenBucket("5/second", risk_coupling=2), "TokenBucket.risk_coupling"),
        (lambda: TokenBucket("5/second", name="has space"), "TokenBucket.name"),
        (lambda: Quota("lots/day"), "Quota.limit"),
        (lambda: Quota("10/day", name='say "hi"'), "Quota.name"),
        (lambda: TokenBucket("5/second", name="naïve"), "TokenBucket.name"),
        (lambda: Quota("10/day", per="planet"), "Quota.per"),  # type: ignore[arg-type]
        (lambda: Quota("10/day", strategy="leaky"), "Quota.strategy"),  # type: ignore[arg-type]
        (lambda: Concurrency(0), "Concurrency.limit"),
        (lambda: NetworkPolicy(deny_countries=["USA"]), "NetworkPolicy.deny_countries"),
        (lambda: NetworkPolicy(deny_cidrs=["10.0.0.0/33"]), "NetworkPolicy.deny_cidrs"),
        (lambda: NetworkPolicy(allow_asns=[-3]), "NetworkPolicy.allow_asns"),
        (lambda: NetworkPolicy(anonymizers={"vpn": "explode"}), "AnonymizerRule.treatment"),
        (lambda: NetworkPolicy(anonymizers={"teleport": "block"}), "NetworkPolicy.anonymizers"),
        (lambda: NetworkPolicy(ipv4_prefix=40), "NetworkPolicy.ipv4_prefix"),
        (lambda: NetworkPolicy(fan_in=(50.0, 10.0)), "NetworkPolicy.fan_in"),
        (lambda: NetworkPolicy(databases={"weather": "x.mmdb"}), "NetworkPolicy.databases"),
        (lambda: Scoring(weights={"vibes": 1.0}), "Scoring.weights"),
        (lambda: Scoring(client_risk={"browser": 3.0}), "Scoring.client_risk['browser']"),
        (lambda: AnonymizerRule("score", min_strength=2), "AnonymizerRule.min_strength"),
        (lambda: Enforcement(ladder=((0.8, "block"), (0.5, "log"))), "Enforcement.ladder[1]"),
        (lambda: Enforcement(ladder=((0.5, "explode"),)), "Enforcement.ladder[0]"),
        (lambda: Enforcement(ban_at="degrade", ban_seconds=60), "Enforcement.ban_at"),
        (lambda: Policy(bucket="5/second"), "Policy.bucket"),  # type: ignore[arg-type]
        (lambda: Policy(concurrency="many"), "Policy.concurrency"),  # type: ignore[arg-type]
        (lambda: Policy(trusted_proxies=["not-a-cidr"]), "Policy.trusted_proxies"),
        (lambda: Policy(ipv6_prefix=8), "Policy.ipv6_prefix"),
        (lambda: Policy(exempt_paths="/health"), "Policy.exempt_paths"),  # type: ignore[arg-type]
        (
            lambda: Policy(quotas=(Quota("1/day", name="q"), Quota("2/day", name="q"))),
            "Policy.quotas",
        ),
        (lambda: Guard(policy="strict"), "policy"),  # type: ignore[arg-type]
        (lambda: Guard(backend="mongodb://x"), "backend"),
        (lambda: AbuseGuard(lambda s, r, se: None, backend=42), "backend"),  # type: ignore[arg-type, arg-type, return-value]
    ],
)
def test_bad_configuration_names_the_field(build: object, field: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build()  # type: ignore[operator]
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(field + ":")


def test_rates_accept_limits_notation_and_numbers() -> None:
    assert TokenBucket("5/second", burst=10).per_second == 5.0
    assert TokenBucket("120/minute").per_second == 2.0
    assert TokenBucket("120/minute").capacity == 120.0
    assert TokenBucket(0.25, burst=1).window == 4.0
    assert TokenBucket("10 per 2 seconds").per_second == 5.0
    quota = Quota("10000/day")
    assert (quota.amount, quota.window) == (10000, 86400.0)


def test_string_treatments_and_integer_concurrency_are_normalized() -> None:
    network = NetworkPolicy(anonymizers={"tor": "block"}, deny_countries=["kp"])
    assert network.anonymizers["tor"].treatment == "block"  # type: ignore[index]
    assert network.deny_countries == frozenset({"KP"})
    policy = Policy(concurrency=3)
    assert isinstance(policy.concurrency, Concurrency) and policy.concurrency.limit == 3
