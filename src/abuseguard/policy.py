"""Policy and its parts: configuration in code, frozen and validated at construction.

Every part checks its fields in ``__post_init__`` and raises :class:`ConfigError` naming the
field, so a bad configuration fails when the app starts, never on a request.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal, TypeGuard

from abuseguard.account import Accounts
from abuseguard.config_check import check_fields, expected
from abuseguard.decision import Action
from abuseguard.degrade import DegradeOptions
from abuseguard.engine import signals
from abuseguard.errors import ConfigError
from abuseguard.exempt import ExemptPaths
from abuseguard.identity import DEFAULT_PROXY_HEADER, PROXY_HEADERS
from abuseguard.intel.edge import TLS_KINDS, EdgeReader
from abuseguard.rates import parse_rate
from abuseguard.request import ANONYMIZER_KINDS, RequestInfo

CostFn = Callable[[RequestInfo], float]
KeyFunc = Callable[[RequestInfo], "str | None"]
# Called with the request's starlette HTTPConnection (headers, scope["user"], state).
PlanFunc = Callable[[Any], "str | Awaitable[str | None] | None"]
Treatment = Literal["ignore", "score", "challenge", "throttle", "block"]
TREATMENTS: tuple[str, ...] = ("ignore", "score", "challenge", "throttle", "block")
# The engine reserves about 1 KB per identity up front: 10 million is about 10 GB.
MAX_IDENTITIES = 10_000_000


def _positive(field_name: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(field_name, f"expected a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(field_name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _policy_name(field_name: str, name: str) -> None:
    # Names appear as Structured Field strings in RateLimit headers: keep them plain ASCII.
    if not isinstance(name, str) or not name or not name.isascii():
        raise ConfigError(field_name, f"use letters, digits, - and _: {name!r}")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(field_name, f"use letters, digits, - and _: {name!r}")


def _unit(field_name: str, value: float) -> None:
    _positive(field_name, value, allow_zero=True)
    if value > 1:
        raise ConfigError(field_name, f"must be within 0..1, got {value!r}")


def _rising_steps(
    field_name: str,
    steps: Iterable[Any],
    check_threshold: Callable[[str, float], None],
    check_action: Callable[[str, Action], None] | None = None,
) -> list[tuple[float, Action]]:
    """(threshold, action) pairs whose thresholds and actions both rise step by step."""
    out: list[tuple[float, Action]] = []
    last_threshold = 0.0
    last_severity = 0
    for i, step in enumerate(steps):
        name = f"{field_name}[{i}]"
        try:
            threshold, action = step
            action = Action(action)
        except (TypeError, ValueError):
            raise ConfigError(name, f"expected (threshold, action), got {step!r}") from None
        check_threshold(name, threshold)
        if check_action is not None:
            check_action(name, action)
        if threshold <= last_threshold or action.severity <= last_severity:
            raise ConfigError(name, "thresholds and actions must rise step by step")
        last_threshold, last_severity = threshold, action.severity
        out.append((float(threshold), action))
    return out


def _held_action(field_name: str, action: Action) -> None:
    if not action.denies and action != Action.DEGRADE:
        raise ConfigError(
            field_name, f"a held account is degraded or refused, not {action.value!r}"
        )


def _range(field_name: str, value: tuple[float, float]) -> None:
    if not isinstance(value, tuple) or len(value) != 2:
        raise ConfigError(field_name, f"expected a (low, high) pair, got {value!r}")
    for v in value:
        _positive(field_name, v, allow_zero=True)
    if value[1] <= value[0]:
        raise ConfigError(field_name, f"high must be above low, got {value!r}")


@dataclass(frozen=True)
class TokenBucket:
    """A cost-weighted token bucket whose refill adapts to risk and load.

    ``rate`` is the refill in `limits` notation ("5/second", "100/minute") or tokens per
    second. ``burst`` is the capacity (default: the rate's amount). ``cost`` is what one
    request takes: a number, a mapping from route ("POST /v1/chat" or "/v1/chat") to a
    number (unlisted routes cost 1), or a callable of the RequestInfo. ``cost_header``
    names a response header carrying the real cost; the difference is charged (or refunded)
    after the response. Risk above ``risk_floor`` slows the refill: the factor is
    ``1 - risk_coupling * (risk - risk_floor) / (1 - risk_floor)``, never below
    ``min_refill_factor``; at or below the floor the refill is exactly ``rate``.
    ``risk_coupling`` is how strongly risk slows the refill (0 = not at all).
    ``name`` names the bucket in the RateLimit headers, in ``PolicyState`` and in
    metrics. ``shadow`` decides and reports this bucket's refusals but never enforces them.
    """

    rate: str | float
    burst: float | None = None
    cost: float | Mapping[str, float] | CostFn = 1.0
    cost_header: str | None = None
    risk_coupling: float = 0.8
    min_refill_factor: float = 0.1
    risk_floor: float = 0.3
    name: str = "default"
    shadow: bool = False
    _per_second: float = field(init=False, repr=False, compare=False)
    _capacity: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_fields(self)
        amount, window, _ = parse_rate("TokenBucket.rate", self.rate)
        object.__setattr__(self, "_per_second", amount / window)
        burst = amount if self.burst is None else self.burst
        _positive("TokenBucket.burst", burst)
        object.__setattr__(self, "_capacity", float(burst))
        if isinstance(self.cost, Mapping):
            for route, value in self.cost.items():
                if not isinstance(route, str):
                    raise ConfigError("TokenBucket.cost", f"route keys must be str, got {route!r}")
                _positive(f"TokenBucket.cost[{route!r}]", value, allow_zero=True)
        elif not callable(self.cost):
            _positive("TokenBucket.cost", self.cost, allow_zero=True)
        _unit("TokenBucket.risk_coupling", self.risk_coupling)
        _unit("TokenBucket.min_refill_factor", self.min_refill_factor)
        _unit("TokenBucket.risk_floor", self.risk_floor)
        if self.risk_floor >= 1:
            raise ConfigError("TokenBucket.risk_floor", "must be below 1")
        if self.cost_header is not None and not self.cost_header.strip():
            raise ConfigError("TokenBucket.cost_header", "must be a header name")
        _policy_name("TokenBucket.name", self.name)

    @property
    def per_second(self) -> float:
        """Refill in tokens per second."""
        return float(self._per_second)

    @property
    def capacity(self) -> float:
        return float(self._capacity)

    @property
    def window(self) -> float:
        """Seconds to refill from empty to full: the window of the RateLimit-Policy header."""
        return self.capacity / self.per_second


@dataclass(frozen=True)
class Quota:
    """A window quota ("10000/day") per identity, counted with `limits`' strategies.

    ``per`` is "key" (the main identity) or "ip". ``strategy`` is one of `limits`'
    fixed-window (the window starts at the first hit, as in `limits`), moving-window or
    sliding-window-counter. ``by_cost`` counts the request cost instead of 1.
    ``limit`` is the allowance and its window in `limits` notation ("10000/day").
    ``name`` names the quota in the RateLimit headers, unique per policy (default:
    "quota-<amount>-<window seconds>s"). ``shadow`` reports the quota's refusals but never
    enforces them.
    """

    limit: str
    per: Literal["key", "ip"] = "key"
    strategy: Literal["fixed-window", "moving-window", "sliding-window-counter"] = "fixed-window"
    by_cost: bool = False
    name: str | None = None
    shadow: bool = False
    _amount: float = field(init=False, repr=False, compare=False)
    _window: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_fields(self)
        amount, window, _ = parse_rate("Quota.limit", self.limit)
        if self.per not in ("key", "ip"):
            raise ConfigError("Quota.per", f"must be 'key' or 'ip', got {self.per!r}")
        if self.strategy not in ("fixed-window", "moving-window", "sliding-window-counter"):
            raise ConfigError("Quota.strategy", f"unknown strategy {self.strategy!r}")
        if not isinstance(self.limit, str):
            raise ConfigError("Quota.limit", "use limits' notation, e.g. '10000/day'")
        object.__setattr__(self, "_amount", amount)
        object.__setattr__(self, "_window", window)
        name = self.name
        if name is None:
            name = f"quota-{int(amount)}-{int(window)}s"
            object.__setattr__(self, "name", name)
        _policy_name("Quota.name", name)

    @property
    def amount(self) -> int:
        return int(self._amount)

    @property
    def window(self) -> float:
        return float(self._window)


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` requests in flight per identity (streamed responses included).

    ``per`` is "key" (the main identity) or "ip". ``name`` names the limit in the
    RateLimit headers and ``PolicyState``. ``shadow`` reports its refusals but never
    enforces them.
    """

    limit: int
    per: Literal["key", "ip"] = "key"
    name: str = "concurrency"
    shadow: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ConfigError("Concurrency.limit", f"must be an int >= 1, got {self.limit!r}")
        if self.per not in ("key", "ip"):
            raise ConfigError("Concurrency.per", f"must be 'key' or 'ip', got {self.per!r}")


def _is_treatment(value: str) -> TypeGuard[Treatment]:
    return value in TREATMENTS


@dataclass(frozen=True)
class AnonymizerRule:
    """What to do with a request from an anonymizer of one kind.

    ``treatment``: ignore, score (add ``weight`` x strength to the risk score), challenge,
    throttle or block (when the graded strength is at least ``min_strength``; below it the
    rule scores). Strength = confidence/100 x recency weight.
    """

    treatment: Treatment = "score"
    weight: float = 1.0
    min_strength: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self)
        if self.treatment not in TREATMENTS:
            raise ConfigError(
                "AnonymizerRule.treatment", f"one of {TREATMENTS}, got {self.treatment!r}"
            )
        _positive("AnonymizerRule.weight", self.weight, allow_zero=True)
        _unit("AnonymizerRule.min_strength", self.min_strength)


DEFAULT_ANONYMIZERS: Mapping[str, AnonymizerRule] = {
    "tor": AnonymizerRule("score", weight=1.0),
    "public_proxy": AnonymizerRule("score", weight=0.9),
    "residential_proxy": AnonymizerRule("score", weight=1.0),
    "vpn": AnonymizerRule("score", weight=0.2),
    "hosting": AnonymizerRule("score", weight=0.25),
}


def _cidrs(
    field_name: str, values: Iterable[str | IPv4Network | IPv6Network]
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except (ValueError, TypeError):
            raise ConfigError(field_name, f"not a CIDR: {value!r}") from None
    return tuple(out)


def _countries(field_name: str, values: Iterable[str]) -> frozenset[str]:
    out = set()
    for value in values:
        if not isinstance(value, str) or len(value) != 2 or not value.isalpha():
            raise ConfigError(field_name, f"expected ISO 3166 alpha-2 codes, got {value!r}")
        out.add(value.upper())
    return frozenset(out)


def _asns(field_name: str, values: Iterable[int]) -> frozenset[int]:
    out = set()
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(field_name, f"expected AS numbers, got {value!r}")
        out.add(value)
    return frozenset(out)


@dataclass(frozen=True)
class NetworkPolicy:
    """Where requests come from: lists, anonymizer treatments, per-network ceilings, fan-in.

    Allow lists always win over scoring and network rules. Deny lists block. Countries in
    ``allow_countries`` (ISO codes), ASNs in ``allow_asns`` and networks in
    ``allow_cidrs`` are always served; ``deny_countries`` (reason ``geo``), ``deny_asns``
    and ``deny_cidrs`` (reason ``deny_list``) are blocked with 403. Countries in
    ``score_countries`` add the ``geo`` signal. ``per_ip``, ``per_prefix`` and ``per_asn``
    are token buckets shared by everybody behind that network (IPv4 prefixes are /24 and
    IPv6 /48 by default). With ``nat_fairness`` an IP or prefix on an eyeball network
    (not hosting, not anonymized) carrying many distinct accounts gets a ceiling that grows
    by ``nat_per_account`` of itself per extra account, up to ``nat_max`` times.
    ``fan_in`` is the (low, high) ramp of distinct accounts behind one IP; a prefix, an
    ASN and a header persona are held to ``fan_in_scales`` times that (ip, prefix, asn,
    persona), since more honest accounts share the wider ones.
    ``databases`` maps database kinds (asn, country, city, anonymous_ip, anonymous_plus,
    residential_proxy, ip_risk) to mmdb paths.
    ``anonymizers`` maps each anonymizer kind (vpn, hosting, public_proxy,
    residential_proxy, tor) to an `AnonymizerRule` or a treatment name. Networks of the
    ASNs in ``hosting_asns``, and with ``builtin_hosting_asns`` those of a built-in list of
    hosting and cloud ASNs, count as hosting. ``ipv4_prefix`` and ``ipv6_prefix`` are the
    prefix lengths of a network prefix (per-prefix buckets, fan-in and fan-out).
    ``fan_out_asns``, ``fan_out_countries`` and ``fan_out_prefixes`` are the (low, high)
    ramps of the distinct ASNs, countries and prefixes one account comes from (the
    ``fan_out`` signal). ``shadow`` reports the network rules' and buckets' refusals but
    never enforces them.
    """

    allow_countries: Iterable[str] = ()
    deny_countries: Iterable[str] = ()
    score_countries: Iterable[str] = ()
    allow_asns: Iterable[int] = ()
    deny_asns: Iterable[int] = ()
    # a str as given, a network as held after construction (dataclasses.replace)
    allow_cidrs: Iterable[str | IPv4Network | IPv6Network] = ()
    deny_cidrs: Iterable[str | IPv4Network | IPv6Network] = ()
    anonymizers: Mapping[str, AnonymizerRule | str] = field(
        default_factory=lambda: dict(DEFAULT_ANONYMIZERS)
    )
    hosting_asns: Iterable[int] = ()
    builtin_hosting_asns: bool = True
    per_ip: TokenBucket | None = None
    per_prefix: TokenBucket | None = None
    per_asn: TokenBucket | None = None
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    nat_fairness: bool = True
    nat_per_account: float = 0.5
    nat_max: float = 50.0
    fan_in: tuple[float, float] = (12.0, 60.0)
    fan_in_scales: tuple[float, float, float, float] = (1.0, 2.0, 25.0, 40.0)
    fan_out_asns: tuple[float, float] = (3.0, 8.0)
    fan_out_countries: tuple[float, float] = (2.0, 5.0)
    fan_out_prefixes: tuple[float, float] = (12.0, 60.0)
    databases: Mapping[str, str | os.PathLike[str]] = field(default_factory=dict)
    shadow: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        set_ = object.__setattr__
        set_(
            self,
            "allow_countries",
            _countries("NetworkPolicy.allow_countries", self.allow_countries),
        )
        set_(
            self, "deny_countries", _countries("NetworkPolicy.deny_countries", self.deny_countries)
        )
        set_(
            self,
            "score_countries",
            _countries("NetworkPolicy.score_countries", self.score_countries),
        )
        set_(self, "allow_asns", _asns("NetworkPolicy.allow_asns", self.allow_asns))
        set_(self, "deny_asns", _asns("NetworkPolicy.deny_asns", self.deny_asns))
        set_(self, "hosting_asns", _asns("NetworkPolicy.hosting_asns", self.hosting_asns))
        set_(self, "allow_cidrs", _cidrs("NetworkPolicy.allow_cidrs", self.allow_cidrs))
        set_(self, "deny_cidrs", _cidrs("NetworkPolicy.deny_cidrs", self.deny_cidrs))
        rules: dict[str, AnonymizerRule] = {}
        for kind, rule in dict(self.anonymizers).items():
            if kind not in ANONYMIZER_KINDS:
                raise ConfigError(
                    "NetworkPolicy.anonymizers", f"unknown kind {kind!r}; use {ANONYMIZER_KINDS}"
                )
            if isinstance(rule, str):
                if not _is_treatment(rule):
                    raise ConfigError("AnonymizerRule.treatment", expected(Treatment, rule))
                default = DEFAULT_ANONYMIZERS.get(kind, AnonymizerRule())
                rule = AnonymizerRule(rule, weight=default.weight)
            if not isinstance(rule, AnonymizerRule):
                raise ConfigError(
                    f"NetworkPolicy.anonymizers[{kind!r}]",
                    f"expected AnonymizerRule or str, got {rule!r}",
                )
            rules[kind] = rule
        set_(self, "anonymizers", rules)
        for name in ("per_ip", "per_prefix", "per_asn"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, TokenBucket):
                raise ConfigError(
                    f"NetworkPolicy.{name}", f"expected TokenBucket or None, got {value!r}"
                )
        if not (8 <= self.ipv4_prefix <= 32):
            raise ConfigError(
                "NetworkPolicy.ipv4_prefix", f"must be within 8..32, got {self.ipv4_prefix}"
            )
        if not (16 <= self.ipv6_prefix <= 128):
            raise ConfigError(
                "NetworkPolicy.ipv6_prefix", f"must be within 16..128, got {self.ipv6_prefix}"
            )
        _positive("NetworkPolicy.nat_per_account", self.nat_per_account, allow_zero=True)
        _positive("NetworkPolicy.nat_max", self.nat_max)
        if self.nat_max < 1:
            raise ConfigError("NetworkPolicy.nat_max", "must be >= 1")
        if len(self.fan_in_scales) != 4:
            raise ConfigError("NetworkPolicy.fan_in_scales", "expected (ip, prefix, asn, persona)")
        for i, scale in enumerate(self.fan_in_scales):
            _positive(f"NetworkPolicy.fan_in_scales[{i}]", scale)
        for name in ("fan_in", "fan_out_asns", "fan_out_countries", "fan_out_prefixes"):
            _range(f"NetworkPolicy.{name}", getattr(self, name))
        from abuseguard.intel.geo import KINDS as known

        for kind in self.databases:
            if kind not in known:
                raise ConfigError(
                    "NetworkPolicy.databases",
                    f"unknown database kind {kind!r}; use {sorted(known)}",
                )


# The signals, their default weights and which are weak are declared once, in
# `engine.signals`. Weak: what an honest client can raise on its own (using its
# allowance, a regular backend's cadence, its client software, reusing its own prompt
# shape, errors, where it lives); alone they may log or delay a request, never refuse it:
# a denial needs a strong signal (anonymizer, fan-in, fan-out, impatience, shared
# template, elicitation, prior).
DEFAULT_WEIGHTS: Mapping[str, float] = signals.DEFAULT_WEIGHTS
DEFAULT_WEAK_SIGNALS: frozenset[str] = signals.DEFAULT_WEAK_SIGNALS

DEFAULT_CLIENT_RISK: Mapping[str, float] = {
    "empty": 0.9,
    "browser": 0.0,
    "mobile": 0.0,
    "sdk": 0.0,
    "script": 0.6,
    "headless": 1.0,
    "crawler": 0.7,
    "unknown": 0.4,
}


EvidenceStep = tuple[float, Action | str]


@dataclass(frozen=True)
class Evidence:
    """Evidence that accumulates per account: a sequential test (CUSUM) over the signals of
    every request, whose crossing holds the account at a ladder step until it is forgiven.

    Each scored request adds its evidence, the log-likelihood ratio the score's logit
    already carries (each signal's contribution, weight x value), less ``drift``; the sum
    never goes below 0. No signal adds more than ``signal_cap`` and the weak signals
    (`Scoring.weak_signals`) together no more than ``weak_cap``, which may not exceed
    ``drift``: weak signals alone never accumulate, whatever their number. With
    ``signal_cap + weak_cap <= drift`` (the defaults) one strong signal with every weak
    one does not accumulate either: only two independent signals, request after request,
    do. No request adds more than ``max_step``, so it takes at least
    ``threshold / max_step`` requests to reach a threshold. The evidence halves every
    ``half_life`` seconds (forgiveness over hours to days).

    ``steps``: (evidence threshold, action) with rising thresholds and rising severity.
    Reaching a threshold holds the account at the first ladder step
    (`Enforcement.ladder`) at least as severe as the step's action (the top step when
    none is), whatever its instantaneous score, with the reason ``evidence``; a ban
    follows when that step is `Enforcement.ban_at` or above. The hold ends once the
    evidence has stayed below the first threshold for ``quiet_period`` seconds, or at
    `Guard.forgive`. ``enabled`` False turns accumulated evidence off.
    """

    enabled: bool = True
    steps: tuple[EvidenceStep, ...] = ((24.0, Action.CHALLENGE), (60.0, Action.BLOCK))
    drift: float = 3.5
    weak_cap: float = 1.0
    signal_cap: float = 2.0
    max_step: float = 2.0
    half_life: float = 43200.0
    quiet_period: float = 21600.0

    def __post_init__(self) -> None:
        check_fields(self)
        steps = _rising_steps("Evidence.steps", self.steps, _positive, _held_action)
        if not steps and self.enabled:
            raise ConfigError("Evidence.steps", "at least one step (or enabled=False)")
        object.__setattr__(self, "steps", tuple(steps))
        _positive("Evidence.drift", self.drift)
        _positive("Evidence.weak_cap", self.weak_cap, allow_zero=True)
        _positive("Evidence.signal_cap", self.signal_cap)
        _positive("Evidence.max_step", self.max_step)
        _positive("Evidence.half_life", self.half_life)
        _positive("Evidence.quiet_period", self.quiet_period, allow_zero=True)
        if self.weak_cap > self.drift:
            raise ConfigError(
                "Evidence.weak_cap",
                f"must not exceed drift ({self.drift!r}), or weak signals alone would "
                f"accumulate; got {self.weak_cap!r}",
            )


@dataclass(frozen=True)
class Scoring:
    """The risk model: a logistic combination of signals, each in 0..1.

    score = 1 / (1 + exp(-(bias + sum(weight[s] * signal[s])))). A signal whose
    contribution reaches ``reason_min`` is named in the decision's reasons. Thresholds are
    (low, high) ramps. ``enabled`` False turns the risk model off (the limits and network
    rules stay). ``bias`` sets the score of a client with no signal at all. ``weights``
    overrides the weight of any signal (the others keep their defaults). ``client_risk``
    overrides the risk of any User-Agent client class (browser, mobile, sdk, script,
    headless, crawler, empty, unknown), the ``client`` signal.

    Behaviour signals wait until the identity has sent ``min_events`` requests.
    ``cadence_spread`` ramps how irregular the gaps between requests are (a low spread is
    risky). ``error_share`` ramps the share of 4xx/5xx answers, ``impatience_share`` the
    share of requests sent before the Retry-After the client was given,
    ``template_share`` the share of an account's prompts that repeat one template, and
    ``shared_template_accounts`` the number of accounts sending the same template.
    ``sketch_horizon`` (seconds) is how long the fan-in, fan-out and template sketches
    remember what they saw.

    ``content`` (on by default) reads the first ``content_max_bytes`` of POST/PUT/PATCH
    bodies for prompt templates and reasoning-elicitation markers; the body is replayed to
    the app unchanged and nothing of it is stored but two 64-bit fingerprints per account.
    It is what catches harvesting that stays under every rate limit (one template across
    many accounts); the fingerprint costs about 6-7 us for a body of a few hundred bytes
    (benchmarks/bench_content.py), plus reading the body: set
    ``content=False`` where that latency matters more. What needs no body (bans, deny
    rules, the identity's bucket, quotas, concurrency) is checked first, and a request it
    refuses is refused before its body is read. ``content_read_timeout`` (seconds, > 0)
    bounds the wait for the body of a request that could be served: past it the request is
    decided without its content and the app still receives the whole body. The default
    weights were tuned on the simulator's default mix (``abuseguard simulate``) and checked
    on its ``hard`` mix and other seeds.

    ``evaluation_formats`` (on by default) recognises the published prompt formats of public
    benchmarks and evaluation harnesses (lm-evaluation-harness MMLU and GSM8K, simple-evals,
    few-shot Q/A blocks; `abuseguard.intel.benchmarks`): such a request, unless it also
    demands free-form reasoning or asks for thousands of output tokens, has its
    ``elicitation`` discounted and, when recognised with confidence, its template left out
    of ``template`` and ``shared_template``. Undeclared evaluation runs from one cloud
    address were held on the ``capable`` mix for "Let's think step by step" and a shared
    benchmark header. Address, rate and behaviour signals still apply. False restores the
    plain reading.

    ``volume_rate`` ramps the identity's long-run request rate as a share of its bucket's
    rate (the bucket as configured; without a bucket, of 1 request per second): (0.5, 1.0)
    means a client using half its allowance around the clock starts to count and one using
    all of it counts in full. ``burst_ratio`` ramps how far the short-run rate (about 10 s)
    rises above the identity's own long-run rate, as a share of what its bucket lets
    through in 10 s (rate + burst / 10).

    ``weak_signals`` names the signals an honest client can raise alone (its software, its
    cadence, its use of its own allowance...). Unless a strong signal (any other) reached
    ``reason_min`` within the last ``Enforcement.score_half_life`` seconds, the ladder stops
    at its last step that serves the request (log, delay, degrade) and the risk does not
    slow the bucket's refill. An empty set lets every signal refuse on its own.

    ``evidence`` accumulates the signals per account into a sticky hold (see
    :class:`Evidence`). ``spend_share`` ramps the real cost (tokens) an account was
    reported to spend per day (`Guard.complete`'s ``cost`` or ``usage``) as a share of its
    token allowance (the key bucket when it has a ``cost_header``, else the tightest
    ``by_cost`` key quota; the plan's own when `Policy.plans` gives the client one, as
    ``volume`` and ``burst`` use the plan's bucket, memory backend); without such an
    allowance ``spend_cohort``, when set, ramps it as a multiple of the cohort's 90th
    percentile of spend per day (a running estimate over every account that reported a
    cost). It is None by default: on the simulator's
    capable mix the cohort comparison fired on eval harnesses and SDK backends and almost
    never on abuse, which spreads its volume over many light accounts.
    """

    enabled: bool = True
    bias: float = -4.0
    weights: Mapping[str, float] = field(default_factory=dict)
    client_risk: Mapping[str, float] = field(default_factory=dict)
    reason_min: float = 0.6
    min_events: int = 8
    volume_rate: tuple[float, float] = (0.5, 1.0)
    burst_ratio: tuple[float, float] = (0.5, 1.0)
    cadence_spread: tuple[float, float] = (0.2, 0.6)
    error_share: tuple[float, float] = (0.3, 0.8)
    impatience_share: tuple[float, float] = (0.15, 0.6)
    template_share: tuple[float, float] = (0.5, 0.95)
    shared_template_accounts: tuple[float, float] = (8.0, 40.0)
    content: bool = True
    content_max_bytes: int = 16384
    evaluation_formats: bool = True
    sketch_horizon: float = 3600.0
    content_read_timeout: float = 1.5
    weak_signals: Iterable[str] = DEFAULT_WEAK_SIGNALS
    evidence: Evidence = field(default_factory=Evidence)
    spend_share: tuple[float, float] = (0.8, 1.2)
    spend_cohort: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        check_fields(self, signed=("bias",))
        if not isinstance(self.evidence, Evidence):
            raise ConfigError("Scoring.evidence", f"expected Evidence, got {self.evidence!r}")
        weak = frozenset(self.weak_signals)
        unknown = weak - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ConfigError(
                "Scoring.weak_signals",
                f"unknown signals {sorted(unknown)}; use {sorted(DEFAULT_WEIGHTS)}",
            )
        object.__setattr__(self, "weak_signals", weak)
        weights = dict(DEFAULT_WEIGHTS)
        for name, value in dict(self.weights).items():
            if name not in DEFAULT_WEIGHTS:
                raise ConfigError(
                    "Scoring.weights", f"unknown signal {name!r}; use {sorted(DEFAULT_WEIGHTS)}"
                )
            _positive(f"Scoring.weights[{name!r}]", value, allow_zero=True)
            weights[name] = float(value)
        object.__setattr__(self, "weights", weights)
        risks = dict(DEFAULT_CLIENT_RISK)
        for name, value in dict(self.client_risk).items():
            if name not in DEFAULT_CLIENT_RISK:
                raise ConfigError(
                    "Scoring.client_risk",
                    f"unknown client class {name!r}; use {sorted(DEFAULT_CLIENT_RISK)}",
                )
            _unit(f"Scoring.client_risk[{name!r}]", value)
            risks[name] = float(value)
        object.__setattr__(self, "client_risk", risks)
        if not math.isfinite(self.bias):
            raise ConfigError("Scoring.bias", "must be finite")
        _positive("Scoring.reason_min", self.reason_min)
        _positive("Scoring.min_events", self.min_events)
        _positive("Scoring.content_max_bytes", self.content_max_bytes)
        _positive("Scoring.sketch_horizon", self.sketch_horizon)
        _positive("Scoring.content_read_timeout", self.content_read_timeout)
        for name in (
            "volume_rate",
            "burst_ratio",
            "cadence_spread",
            "error_share",
            "impatience_share",
            "template_share",
            "shared_template_accounts",
            "spend_share",
        ):
            _range(f"Scoring.{name}", getattr(self, name))
        if self.spend_cohort is not None:
            _range("Scoring.spend_cohort", self.spend_cohort)


LadderStep = tuple[float, Action | str]


@dataclass(frozen=True)
class Enforcement:
    """The ladder from smoothed risk score to action, with hysteresis, bans and shadow mode.

    ``ladder``: (threshold, action) steps with rising thresholds and rising severity. A
    client climbs a step when its smoothed score reaches the threshold and steps down once
    it falls ``hysteresis`` below it. The smoothed score rises at once, falls back by
    ``score_alpha`` of the gap per request, and decays with ``score_half_life`` while the
    client is idle (forgiveness). Reaching ``ban_at`` bans the
    identity for ``ban_seconds`` (0 = never). ``shadow`` decides and reports but enforces
    nothing; ``shadow_actions`` shadows only those actions. ``delay_seconds`` is the tarpit
    of the delay action. Refusal bodies name only the limit reasons (rate, quota,
    concurrency, backend_unavailable), so a client learns which limit it hit but not which
    risk signal to dodge; logs, metrics, observers and ``current_decision`` keep every
    reason. ``reveal_reasons`` puts every reason in the body, for development.
    ``degrade`` is what the built-in degrade action does to OpenAI-style requests and
    responses (see :class:`DegradeOptions`; in shadow mode it is computed, not applied).
    """

    ladder: tuple[LadderStep, ...] = (
        (0.5, Action.LOG),
        (0.6, Action.DELAY),
        (0.7, Action.CHALLENGE),
        (0.8, Action.THROTTLE),
        (0.9, Action.BLOCK),
    )
    hysteresis: float = 0.1
    score_alpha: float = 0.3
    score_half_life: float = 600.0
    ban_at: Action | str | None = None
    ban_seconds: float = 0.0
    delay_seconds: float = 1.0
    shadow: bool = False
    shadow_actions: Iterable[Action | str] = ()
    reveal_reasons: bool = False
    degrade: DegradeOptions = field(default_factory=DegradeOptions)

    def __post_init__(self) -> None:
        check_fields(self)
        steps = _rising_steps("Enforcement.ladder", self.ladder, _unit)
        if len(steps) > 8:
            raise ConfigError("Enforcement.ladder", "at most 8 steps")
        object.__setattr__(self, "ladder", tuple(steps))
        _unit("Enforcement.hysteresis", self.hysteresis)
        _unit("Enforcement.score_alpha", self.score_alpha)
        _positive("Enforcement.score_half_life", self.score_half_life)
        _positive("Enforcement.ban_seconds", self.ban_seconds, allow_zero=True)
        _positive("Enforcement.delay_seconds", self.delay_seconds, allow_zero=True)
        if self.ban_at is not None:
            try:
                ban_action = Action(self.ban_at)
            except ValueError:
                raise ConfigError("Enforcement.ban_at", f"not an action: {self.ban_at!r}") from None
            if ban_action not in [a for _, a in steps]:
                raise ConfigError(
                    "Enforcement.ban_at", f"{ban_action.value!r} is not on the ladder"
                )
            object.__setattr__(self, "ban_at", ban_action)
        try:
            shadowed = frozenset(Action(a) for a in self.shadow_actions)
        except ValueError as exc:
            raise ConfigError("Enforcement.shadow_actions", str(exc)) from None
        object.__setattr__(self, "shadow_actions", shadowed)

    def ban_level(self) -> int:
        if self.ban_at is None or self.ban_seconds <= 0:
            return 0
        return 1 + [a for _, a in self.ladder].index(Action(self.ban_at))


WS_CLOSE_CODES: frozenset[int] = frozenset({1000, 1001, 1008, 1011, 1013})


def _numeric_cost_bucket(field_name: str, bucket: TokenBucket | None) -> None:
    if bucket is None:
        return
    if not isinstance(bucket, TokenBucket):
        raise ConfigError(field_name, f"expected TokenBucket or None, got {bucket!r}")
    if isinstance(bucket.cost, Mapping) or callable(bucket.cost):
        raise ConfigError(f"{field_name}.cost", "must be a number for WebSocket limits")


@dataclass(frozen=True)
class WebSocketPolicy:
    """Limits for WebSocket connections, applied at the ASGI level.

    ``connect`` limits connection attempts per identity (``per``: "key" is the API key hash,
    else the client IP; "ip" is always the client IP). ``max_connections`` caps the open
    connections of one identity. ``messages`` limits what one connection may send (each
    ``websocket.receive`` costs the bucket's numeric cost) and ``max_message_bytes`` caps
    one message. ``guard_handshake`` first runs the handshake through the guard like an
    HTTP request (bans, deny lists, scoring, the main bucket). A refused handshake is
    answered with HTTP 429 (limits) or 403 (risk) through the ASGI denial-response
    extension when the server offers it, else closed before accept (1013 for limits, 1008
    for risk). A connection over its message limit is closed with ``message_close_code``;
    an oversized message with 1009. ``shadow`` reports every WebSocket limit without
    enforcing it. The limits live in the process, per worker, whatever the backend.
    """

    connect: TokenBucket | None = field(
        default_factory=lambda: TokenBucket("30/minute", burst=10, name="ws-connect")
    )
    messages: TokenBucket | None = field(
        default_factory=lambda: TokenBucket("20/second", burst=40, name="ws-messages")
    )
    max_connections: int | None = None
    max_message_bytes: int | None = None
    per: Literal["key", "ip"] = "key"
    guard_handshake: bool = True
    message_close_code: int = 1008
    shadow: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        _numeric_cost_bucket("WebSocketPolicy.connect", self.connect)
        _numeric_cost_bucket("WebSocketPolicy.messages", self.messages)
        for name in ("max_connections", "max_message_bytes"):
            value = getattr(self, name)
            bad = isinstance(value, bool) or not isinstance(value, int) or value < 1
            if value is not None and bad:
                raise ConfigError(f"WebSocketPolicy.{name}", f"must be an int >= 1, got {value!r}")
        if self.per not in ("key", "ip"):
            raise ConfigError("WebSocketPolicy.per", f"must be 'key' or 'ip', got {self.per!r}")
        code = self.message_close_code
        if (
            isinstance(code, bool)
            or not isinstance(code, int)
            or not (code in WS_CLOSE_CODES or 3000 <= code <= 4999)
        ):
            raise ConfigError(
                "WebSocketPolicy.message_close_code",
                f"use one of {sorted(WS_CLOSE_CODES)} or 3000..4999, got {code!r}",
            )


@dataclass(frozen=True)
class FailMode:
    """What a shared backend (Redis) does when it cannot answer within its time budget:
    an outage, a timeout, or its circuit breaker open.

    ``open`` serves the request (True) or refuses it (False: 429 with the reason
    ``backend_unavailable`` and a Retry-After). ``routes`` overrides ``open`` per route:
    keys are paths ("/v1/admin") or a method and a path ("POST /v1/chat"), each covering
    the paths below it by whole segments ("/v1/admin" is not "/v1/administrator"); the
    longest matching key wins. With ``fallback`` a request served while the circuit is
    open still goes through the policy's token buckets, enforced in-process by each worker
    with rate and burst divided by the number of workers (``WEB_CONCURRENCY`` or
    ``--workers``; see the Redis backend). The memory backend cannot fail and ignores this.
    """

    open: bool = True
    routes: Mapping[str, bool] = field(default_factory=dict)
    fallback: bool = True
    _rules: tuple[tuple[str | None, ExemptPaths, bool], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if not isinstance(self.open, bool):
            raise ConfigError("FailMode.open", f"expected a bool, got {self.open!r}")
        if not isinstance(self.fallback, bool):
            raise ConfigError("FailMode.fallback", f"expected a bool, got {self.fallback!r}")
        if isinstance(self.routes, str) or not isinstance(self.routes, Mapping):
            raise ConfigError("FailMode.routes", f"expected a mapping, got {self.routes!r}")
        rules: list[tuple[str | None, str, bool]] = []
        for key, value in self.routes.items():
            if not isinstance(key, str) or not isinstance(value, bool):
                raise ConfigError(
                    "FailMode.routes", f"expected str -> bool items, got {key!r}: {value!r}"
                )
            method, _, path = key.strip().rpartition(" ")
            if not path.startswith("/") or (method and not method.isalpha()):
                raise ConfigError(
                    "FailMode.routes", f"keys are '/path' or 'METHOD /path', got {key!r}"
                )
            rules.append((method.upper() or None, path, value))
        rules.sort(key=lambda rule: (len(rule[1]), rule[0] is not None), reverse=True)
        # Whole path segments, as for exempt paths: "/v1/admin" is not "/v1/administrator".
        object.__setattr__(self, "_rules", tuple((m, ExemptPaths((p,)), v) for m, p, v in rules))

    def fails_open(self, method: str, path: str) -> bool:
        """Whether a request to ``method path`` is served while the backend fails."""
        for rule_method, paths, value in self._rules:
            if (rule_method is None or rule_method == method) and paths.matches(path):
                return bool(value)
        return self.open


@dataclass(frozen=True)
class UnverifiedKeys:
    """A ceiling on requests carrying API keys the app has not accepted yet, per client
    address and per network prefix, that holds however many keys a client invents.

    Every API key has its own bucket, so a client that invents a new key per request
    would get a fresh allowance each time. A key counts as accepted once the app answered
    a request carrying it with one of ``accepted_statuses`` (2xx). Until then each of its
    requests first takes one token from the budgets of its address (``per_ip``; IPv6
    grouped to ``Policy.ipv6_prefix``) and of its network prefix (``per_prefix``, the
    prefix of `NetworkPolicy`, /24 and /48 by default); with either one empty the request
    is refused (429, reason ``unverified_key``) before any per-key state is created.
    Only the rate, burst and name of those buckets are used. An answer in
    ``invalid_statuses`` for a key not accepted, or the app's own report
    (`mark_invalid_key`, `Guard.report_invalid_key`), costs the address and the prefix
    ``invalid_key_cost`` tokens in all (their budgets go at most one full burst into
    debt). Accepted keys never draw, and each distinct key accepted behind an address
    (or prefix) gives back the token it drew and raises the ceiling (burst and rate) by
    ``growth_per_key`` of itself, up to ``max_growth`` times (after that, keys accepted
    there grow and give back nothing), so many real keys behind one NAT keep their own
    limits; keys refused or never answered raise nothing. ``max_accepted_keys`` bounds the accepted
    keys remembered (keyed hashes, least recently accepted forgotten first) and
    ``max_addresses`` the addresses and the prefixes tracked. The budgets live in Redis
    with the inline Redis backend, else in each worker (see the identity concepts page).
    """

    per_ip: TokenBucket | None = field(
        default_factory=lambda: TokenBucket("30/minute", burst=20, name="unverified-ip")
    )
    per_prefix: TokenBucket | None = field(
        default_factory=lambda: TokenBucket("120/minute", burst=60, name="unverified-prefix")
    )
    invalid_key_cost: float = 10.0
    invalid_statuses: Iterable[int] = (401, 403)
    accepted_statuses: Iterable[int] = range(200, 300)
    growth_per_key: float = 0.1
    max_growth: float = 6.0
    max_accepted_keys: int = 100_000
    max_addresses: int = 65_536

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("per_ip", "per_prefix"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, TokenBucket):
                raise ConfigError(
                    f"UnverifiedKeys.{name}", f"expected TokenBucket or None, got {value!r}"
                )
        _positive("UnverifiedKeys.invalid_key_cost", self.invalid_key_cost)
        if self.invalid_key_cost < 1:
            raise ConfigError(
                "UnverifiedKeys.invalid_key_cost",
                f"must be >= 1 (a request draws 1), got {self.invalid_key_cost!r}",
            )
        invalid = _statuses("UnverifiedKeys.invalid_statuses", self.invalid_statuses)
        accepted = _statuses("UnverifiedKeys.accepted_statuses", self.accepted_statuses)
        if invalid & accepted:
            raise ConfigError(
                "UnverifiedKeys.accepted_statuses",
                f"must not overlap invalid_statuses, both have {sorted(invalid & accepted)}",
            )
        object.__setattr__(self, "invalid_statuses", invalid)
        object.__setattr__(self, "accepted_statuses", accepted)
        _positive("UnverifiedKeys.growth_per_key", self.growth_per_key, allow_zero=True)
        _positive("UnverifiedKeys.max_growth", self.max_growth)
        if self.max_growth < 1:
            raise ConfigError("UnverifiedKeys.max_growth", f"must be >= 1, got {self.max_growth}")
        for name, least in (("max_accepted_keys", 1), ("max_addresses", 16)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(
                    f"UnverifiedKeys.{name}", f"must be an int >= {least}, got {value!r}"
                )


def _statuses(field_name: str, values: Iterable[int]) -> frozenset[int]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ConfigError(field_name, f"expected HTTP status codes, got {values!r}")
    out = set()
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
            raise ConfigError(field_name, f"expected HTTP status codes 100..599, got {value!r}")
        out.add(value)
    return frozenset(out)


@dataclass(frozen=True)
class EdgeSignals:
    """What a trusted proxy or CDN in front of the app computed, passed on as headers.

    ``bot_score_header`` names the header with the edge's bot score (e.g. a Cloudflare
    transform rule writing ``cf.bot_management.score``); ``bot_score_range`` is its scale
    and ``bot_score_low_is_bot`` its direction (Cloudflare: 1..99, low = automated).
    ``ja4_header`` and ``ja3_header`` name headers with the TLS ClientHello's JA4 or JA3
    fingerprint; ``tls_families`` maps exact fingerprints to what sends them ("browser",
    "mobile", "sdk", "script", "headless", "crawler"). They feed the ``persona`` signal: a
    browser User-Agent over a handshake no browser sends (JA4 without TLS 1.3, SNI or
    HTTP/2), over a fingerprint mapped to another kind, or scored as automated by the edge,
    is a forged persona; an SDK or script the edge calls automated is what it claims. The
    headers are believed only from a peer in `Policy.trusted_proxies`. With no header named
    it reads nothing.
    """

    bot_score_header: str | None = None
    bot_score_range: tuple[float, float] = (1.0, 99.0)
    bot_score_low_is_bot: bool = True
    ja4_header: str | None = None
    ja3_header: str | None = None
    tls_families: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("bot_score_header", "ja4_header", "ja3_header"):
            value = getattr(self, name)
            if value is not None:
                if not value.strip() or not value.isascii() or " " in value.strip():
                    raise ConfigError(
                        f"EdgeSignals.{name}", f"expected a header name, got {value!r}"
                    )
                object.__setattr__(self, name, value.strip().lower())
        low, high = self.bot_score_range
        if not low < high:
            raise ConfigError(
                "EdgeSignals.bot_score_range",
                f"expected (low, high) with low < high, got {self.bot_score_range!r}",
            )
        for fingerprint, kind in self.tls_families.items():
            if kind not in TLS_KINDS:
                raise ConfigError(
                    f"EdgeSignals.tls_families[{fingerprint!r}]",
                    f"expected one of {', '.join(TLS_KINDS)}, got {kind!r}",
                )

    def reader(self) -> EdgeReader:
        return EdgeReader(
            self.bot_score_header,
            self.bot_score_range,
            self.bot_score_low_is_bot,
            self.ja4_header,
            self.ja3_header,
            self.tls_families,
        )


@dataclass(frozen=True)
class Limits:
    """Limits of one route (beside the app-wide ones of `Policy`) or one plan (in place
    of them for the plan's clients: a plan's ``bucket``, ``quotas`` and ``concurrency``
    each replace the app-wide one when set; left unset, ``None`` or ``()``, the
    app-wide one applies).

    ``bucket`` is a token bucket (its ``rate`` and ``burst``; ``cost`` is the request's
    cost from the app-wide bucket), ``quotas`` window quotas, ``concurrency`` the requests
    in flight. Each keeps its own state per identity, and its own name in the RateLimit
    headers: the route or plan name, then the bucket's or quota's name
    ("route-POST-v1-chat-completions-default", "plan-pro-tokens"). ``routes``, in a plan's
    `Limits` only, replaces the limits of those routes (`Policy.routes`) for the plan's
    clients, with the same patterns. ``models`` maps model names to `Limits` that apply
    beside these to the requests whose JSON body names that ``model`` (a body naming no
    model, or a model not listed, gets these limits only; see `abuseguard.model_limits`).
    """

    bucket: TokenBucket | None = None
    quotas: tuple[Quota, ...] = ()
    concurrency: int | None = None
    routes: Mapping[str, Limits] = field(default_factory=dict)
    models: Mapping[str, Limits] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.quotas, Quota):
            object.__setattr__(self, "quotas", (self.quotas,))
        check_fields(self)
        if self.bucket is not None and not isinstance(self.bucket, TokenBucket):
            raise ConfigError("Limits.bucket", f"expected TokenBucket or None, got {self.bucket!r}")
        if not all(isinstance(q, Quota) for q in self.quotas):
            raise ConfigError("Limits.quotas", "expected Quota objects")
        names = [q.name for q in self.quotas]
        if len(set(names)) != len(names):
            raise ConfigError("Limits.quotas", f"quota names must be unique, got {names}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("Limits.concurrency", f"must be >= 1, got {self.concurrency!r}")
        for pattern, limits in self.routes.items():
            _route_pattern("Limits.routes", pattern)
            if not isinstance(limits, Limits) or limits.routes:
                raise ConfigError(
                    f"Limits.routes[{pattern!r}]", f"expected Limits without routes, got {limits!r}"
                )
        for model, limits in self.models.items():
            if not isinstance(model, str) or not model.strip():
                raise ConfigError("Limits.models", f"model names are non-empty str, got {model!r}")
            if not isinstance(limits, Limits) or limits.routes or limits.models:
                raise ConfigError(
                    f"Limits.models[{model!r}]",
                    f"expected Limits without routes or models, got {limits!r}",
                )


_ROUTE_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _route_pattern(field_name: str, pattern: object) -> None:
    if not isinstance(pattern, str):
        raise ConfigError(field_name, f"route patterns are str, got {pattern!r}")
    method, _, path = pattern.rpartition(" ")
    if not path.startswith("/") or (method and method not in _ROUTE_METHODS):
        raise ConfigError(
            field_name,
            f"expected '/path/{{param}}' or 'METHOD /path/{{param}}', got {pattern!r}",
        )


@dataclass(frozen=True)
class Policy:
    """Everything the guard enforces.

    ``bucket`` limits the main identity (``key_func``: by default the hash of the API key
    from ``Authorization: Bearer`` or ``x-api-key``, else the client IP; a ``key_func``
    gets the `RequestInfo`, whose ``connection`` is the Starlette ``HTTPConnection`` in the
    middleware, with ``user`` and ``state`` set by authentication middleware, and None in
    replay). ``quotas`` and
    ``concurrency`` sit beside it. ``network`` adds network intelligence and per-network
    ceilings; ``scoring`` the risk model; ``enforcement`` the ladder. ``trusted_proxies``
    lists the CIDRs whose proxy header is believed; ``proxy_header`` names that one header:
    "x-forwarded-for" (the default, as uvicorn), "forwarded" (RFC 7239) or "x-real-ip".
    Only it is read: a proxy passes the others through from the client, who could then
    choose its own address.
    ``ipv6_prefix`` groups IPv6 clients for IP identities (/64). ``load_target`` is the
    number of in-flight requests above which every refill slows in proportion (0 = off).
    ``exempt_paths`` are paths the guard never touches, with everything below them, matched
    by whole segments ("/health" covers "/health/live", not "/healthz"). ``max_identities``
    bounds each state table; idle identities are evicted first, and a ban or refusal in force
    outlives eviction. The tables reserve about 1 KB of memory per identity up front, so it
    is at most 10,000,000 (about 10 GB). ``websocket`` adds limits on WebSocket connections
    and messages (without it, WebSocket scopes pass through).
    ``fail_mode`` says what happens when a shared backend (Redis) fails: open or closed,
    per route, with an in-process fallback limiter. ``secret`` keys the hash of API keys
    (a str; an empty one is warned about at startup). ``unverified_keys`` caps, per
    address and per prefix, the requests with API keys the app has not accepted yet, so
    invented keys cannot multiply the allowance (None turns it off).
    ``max_header_bytes`` is the longest header value the guard reads: a longer one is
    ignored, as if absent, except the proxy header, cut to its right-most whole hops
    within that many bytes. ``legacy_headers`` adds ``X-RateLimit-Limit``,
    ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (the tightest limit) beside the
    RateLimit headers. ``shadow`` puts the whole policy in shadow mode: every decision is
    made and reported, none is enforced.
    ``routes`` maps Starlette route templates, with or without a method
    ("POST /v1/chat/completions", "/v1/models/{model}"), to `Limits` that apply beside the
    app-wide ones to the requests that route serves (HEAD follows GET); a pattern that
    matches no route of the app is an error at startup. ``plans`` maps plan names to
    `Limits` for the clients of that plan; ``plan_func`` (sync or async) gets the request
    (a Starlette ``HTTPConnection``: headers, ``user``, ``state``) and returns its plan
    name; no plan or an unknown one gets no plan limits. A plan in ``plans`` replaces the
    app-wide bucket, quotas and concurrency for its clients, each one it sets (one it
    leaves unset is inherited). Memory and Redis inline backends (Redis synced mode
    refuses them).
    ``accounts`` brings in what the host app knows about each account (`Accounts`: a hook
    returning `AccountFacts`, allow-lists of keys, organisations and tags whose risk
    actions are capped while their limits still apply, a prior for young unverified
    accounts). Without a ``facts`` hook nothing is known about accounts and only
    ``trusted_keys`` act; None turns it all off. ``edge`` reads what a trusted proxy or CDN
    computed (`EdgeSignals`: a bot score, a JA4 or JA3 fingerprint) into the persona
    signal.
    """

    bucket: TokenBucket | None = field(default_factory=lambda: TokenBucket("10/second", burst=40))
    quotas: tuple[Quota, ...] = ()
    concurrency: Concurrency | int | None = None
    network: NetworkPolicy | None = field(default_factory=NetworkPolicy)
    scoring: Scoring | None = field(default_factory=Scoring)
    enforcement: Enforcement = field(default_factory=Enforcement)
    key_func: KeyFunc | None = None
    trusted_proxies: Iterable[str | IPv4Network | IPv6Network] = ()
    proxy_header: str = DEFAULT_PROXY_HEADER
    ipv6_prefix: int = 64
    max_header_bytes: int = 8192
    load_target: int = 0
    exempt_paths: tuple[str, ...] = ()
    max_identities: int = 200_000
    legacy_headers: bool = False
    secret: str = ""
    shadow: bool = False
    websocket: WebSocketPolicy | None = None
    fail_mode: FailMode = field(default_factory=FailMode)
    unverified_keys: UnverifiedKeys | None = field(default_factory=UnverifiedKeys)
    routes: Mapping[str, Limits] = field(default_factory=dict)
    plans: Mapping[str, Limits] = field(default_factory=dict)
    plan_func: PlanFunc | None = None
    accounts: Accounts | None = field(default_factory=Accounts)
    edge: EdgeSignals | None = None

    def __post_init__(self) -> None:
        if isinstance(self.quotas, Quota):
            object.__setattr__(self, "quotas", (self.quotas,))
        check_fields(self)
        if self.bucket is not None and not isinstance(self.bucket, TokenBucket):
            raise ConfigError("Policy.bucket", f"expected TokenBucket or None, got {self.bucket!r}")
        quotas = self.quotas
        if isinstance(quotas, Quota):
            quotas = (quotas,)
        if not all(isinstance(q, Quota) for q in quotas):
            raise ConfigError("Policy.quotas", "expected Quota objects")
        names = [q.name for q in quotas]
        if len(set(names)) != len(names):
            raise ConfigError("Policy.quotas", f"quota names must be unique, got {names}")
        object.__setattr__(self, "quotas", tuple(quotas))
        conc = self.concurrency
        if isinstance(conc, int) and not isinstance(conc, bool):
            conc = Concurrency(conc)
        if conc is not None and not isinstance(conc, Concurrency):
            raise ConfigError("Policy.concurrency", f"expected int or Concurrency, got {conc!r}")
        object.__setattr__(self, "concurrency", conc)
        if self.network is not None and not isinstance(self.network, NetworkPolicy):
            raise ConfigError(
                "Policy.network", f"expected NetworkPolicy or None, got {self.network!r}"
            )
        if self.scoring is not None and not isinstance(self.scoring, Scoring):
            raise ConfigError("Policy.scoring", f"expected Scoring or None, got {self.scoring!r}")
        if not isinstance(self.enforcement, Enforcement):
            raise ConfigError(
                "Policy.enforcement", f"expected Enforcement, got {self.enforcement!r}"
            )
        if self.key_func is not None and not callable(self.key_func):
            raise ConfigError("Policy.key_func", "must be callable")
        object.__setattr__(
            self, "trusted_proxies", _cidrs("Policy.trusted_proxies", self.trusted_proxies)
        )
        proxy_header = (
            self.proxy_header.strip().lower() if isinstance(self.proxy_header, str) else None
        )
        if proxy_header not in PROXY_HEADERS:
            raise ConfigError(
                "Policy.proxy_header",
                f"expected one of {', '.join(PROXY_HEADERS)}, got {self.proxy_header!r}",
            )
        object.__setattr__(self, "proxy_header", proxy_header)
        if not (16 <= self.ipv6_prefix <= 128):
            raise ConfigError(
                "Policy.ipv6_prefix", f"must be within 16..128, got {self.ipv6_prefix}"
            )
        _positive("Policy.max_header_bytes", self.max_header_bytes)
        _positive("Policy.load_target", self.load_target, allow_zero=True)
        _positive("Policy.max_identities", self.max_identities)
        if not (16 <= self.max_identities <= MAX_IDENTITIES):
            raise ConfigError(
                "Policy.max_identities",
                f"must be within 16..{MAX_IDENTITIES}, got {self.max_identities!r}",
            )
        if isinstance(self.exempt_paths, str):
            raise ConfigError("Policy.exempt_paths", "expected a tuple of path prefixes, not a str")
        for path in self.exempt_paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigError("Policy.exempt_paths", f"paths start with '/', got {path!r}")
        if self.websocket is not None and not isinstance(self.websocket, WebSocketPolicy):
            found = type(self.websocket).__name__
            raise ConfigError("Policy.websocket", f"expected WebSocketPolicy or None, got {found}")
        if not isinstance(self.fail_mode, FailMode):
            raise ConfigError("Policy.fail_mode", f"expected FailMode, got {self.fail_mode!r}")
        if self.unverified_keys is not None and not isinstance(
            self.unverified_keys, UnverifiedKeys
        ):
            found = type(self.unverified_keys).__name__
            raise ConfigError(
                "Policy.unverified_keys", f"expected UnverifiedKeys or None, got {found}"
            )
        for pattern, limits in self.routes.items():
            _route_pattern("Policy.routes", pattern)
            if not isinstance(limits, Limits) or limits.routes:
                raise ConfigError(
                    f"Policy.routes[{pattern!r}]", f"expected Limits without routes, got {limits!r}"
                )
        for plan, limits in self.plans.items():
            _policy_name("Policy.plans", plan)
            if not isinstance(limits, Limits):
                raise ConfigError(f"Policy.plans[{plan!r}]", f"expected Limits, got {limits!r}")
            app_shadow = self.bucket is not None and self.bucket.shadow
            if limits.bucket is not None and limits.bucket.shadow != app_shadow:
                raise ConfigError(
                    f"Policy.plans[{plan!r}].bucket",
                    "a plan's bucket takes the app-wide bucket's place and shares its shadow "
                    f"setting: shadow={app_shadow} (shadow a plan's limits with "
                    "Policy.shadow or Enforcement.shadow_actions instead)",
                )
        if self.plan_func is not None and not callable(self.plan_func):
            raise ConfigError("Policy.plan_func", "must be callable")
        if self.plans and self.plan_func is None:
            raise ConfigError("Policy.plan_func", "Policy.plans needs a plan_func")
        if self.accounts is not None and not isinstance(self.accounts, Accounts):
            found = type(self.accounts).__name__
            raise ConfigError("Policy.accounts", f"expected Accounts or None, got {found}")
        if self.edge is not None:
            if not isinstance(self.edge, EdgeSignals):
                found = type(self.edge).__name__
                raise ConfigError("Policy.edge", f"expected EdgeSignals or None, got {found}")
            if not self.trusted_proxies:
                raise ConfigError(
                    "Policy.edge",
                    "edge headers are believed only from Policy.trusted_proxies; list the "
                    "proxy or CDN ranges that set them",
                )

    @property
    def trusted_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """`trusted_proxies` as networks (what __post_init__ parsed them into), typed so.
        No private field holds them: a Policy's ``__dict__`` stays its settings, which
        ``Policy(**vars(policy))`` relies on."""
        return _cidrs("Policy.trusted_proxies", self.trusted_proxies)
