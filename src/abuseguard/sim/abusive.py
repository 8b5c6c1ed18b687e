"""Abusive scenarios: output harvesting through pools, routers, scripts, slow drips and Tor."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass

from abuseguard.sim import personas, prompts
from abuseguard.sim.core import Emitter, SimContext, Source, lognormal, new_key, origin
from abuseguard.sim.world import HOSTING, MOBILE, RESIDENTIAL, World

LABEL = "abusive"
API_PATH = "/v1/chat/completions"
# The web app's own backend: what browser personas (real or forged) talk to, with the
# account of a web session rather than an API key.
WEB_PATH = "/api/chat"

# Where residential-proxy exits sit (weights): everywhere, skewed to large cheap markets.
PROXY_COUNTRIES: tuple[tuple[str, float], ...] = (
    ("US", 20),
    ("BR", 10),
    ("IN", 10),
    ("VN", 6),
    ("ID", 6),
    ("MX", 5),
    ("PH", 4),
    ("TR", 4),
    ("RU", 4),
    ("EG", 4),
    ("DE", 3),
    ("GB", 3),
    ("FR", 3),
    ("TH", 3),
    ("PK", 3),
    ("AR", 3),
    ("PL", 2),
    ("UA", 2),
    ("CN", 2),
    ("MA", 1),
    ("DZ", 1),
    ("VE", 1),
    ("KR", 1),
    ("JP", 1),
    ("IT", 2),
    ("ES", 2),
)
PROXY_PROVIDERS = (
    "quickshift",
    "novada",
    "netnut",
    "dataimpulse",
    "geonode",
    "brightdata",
    "oxylabs",
    "iproyal",
    "smartproxy",
    "soax",
)
ELICIT_SUFFIX = "\n\nExplain your reasoning step by step in as much detail as possible."


class ProxyExits:
    """A residential-proxy gateway: every call may hand out a fresh home or phone address.

    ``flagged_share`` of the exits are known to the anonymizer database (with a
    confidence); the rest look like any household. ``mobile_share`` of the exits are
    phones behind their carrier's NAT, shared with that carrier's real users.
    """

    def __init__(
        self,
        world: World,
        rng: random.Random,
        flagged_share: float,
        mobile_share: float,
        ipv6_share: float,
    ) -> None:
        self.world = world
        self.rng = rng
        self.flagged_share = flagged_share
        self.mobile_share = mobile_share
        self.ipv6_share = ipv6_share
        self.countries = [name for name, _ in PROXY_COUNTRIES]
        self.weights = [weight for _, weight in PROXY_COUNTRIES]
        self.provider = rng.choice(PROXY_PROVIDERS)

    def exit(self) -> str:
        rng, world = self.rng, self.world
        roll = rng.random()
        if roll < self.mobile_share:
            carrier = world.pick(rng, MOBILE)
            return rng.choice(world.cgnat[carrier.asn])
        country = rng.choices(self.countries, weights=self.weights)[0]
        net = world.pick(rng, RESIDENTIAL, country)
        if roll < self.mobile_share + self.ipv6_share and world.has_v6(net):
            ip = world.v6(rng, net)
        else:
            ip = world.v4(rng, net)
        if rng.random() < self.flagged_share:
            confidence = max(5, min(99, int(rng.triangular(15, 99, 80))))
            world.flag(ip, "residential_proxy", confidence, self.provider, world.seen(rng, 20))
        return ip


def _harvest_body(
    rng: random.Random,
    templates: list[int],
    elicitation_share: float,
    *,
    stream: bool,
    max_tokens: int,
) -> str:
    if rng.random() < elicitation_share:
        text = prompts.elicitation_prompt(rng, rng.choice(templates))
    else:
        text = prompts.free_prompt(rng) + ELICIT_SUFFIX
    model = prompts.MODEL_BEST if rng.random() < 0.85 else "atlas-1"
    return prompts.chat_body(
        model, [{"role": "user", "content": text}], stream=stream, max_tokens=max_tokens
    )


# --- account pools over residential proxies -------------------------------------------------


@dataclass
class ResiPool:
    """Account pools driven by a central scheduler through residential proxies.

    Each account is its own actor (``resi_pool/pool1/acct0042``) with modest volume: the
    scheduler fires it every ``interval_median`` seconds (per pool) with small jitter,
    accounts staggered so the pool as a whole dispatches at a steady rate. Every request
    (or every few minutes, for pools with sticky sessions) leaves through another
    residential exit in another country. Personas differ per pool: a browser User-Agent
    over library headers, real SDK headers, or a high-fidelity browser impersonation;
    browser personas drive the web app's endpoint with web accounts, the SDK one the API.
    """

    pools: int = 3
    accounts_per_pool: int = 200
    interval_median: float = 150.0
    jitter: float = 0.12
    flagged_share: float = 0.6
    mobile_share: float = 0.1
    ipv6_share: float = 0.08
    sticky_share: float = 0.34
    elicitation_share: float = 0.6
    error_rate: float = 0.02


_POOL_PERSONAS = ("forged_browser", "sdk", "impersonation")


def resi_pool(ctx: SimContext, p: ResiPool) -> list[Source]:
    sources: list[Source] = []
    for pool in range(ctx.count(p.pools)):
        rng = ctx.rng("resi_pool", pool)
        interval = lognormal(rng, p.interval_median, 0.3)
        sticky = rng.uniform(300.0, 1800.0) if rng.random() < p.sticky_share else 0.0
        templates = rng.sample(range(len(prompts.ELICITATION_TEMPLATES)), 3)
        style = _POOL_PERSONAS[pool % len(_POOL_PERSONAS)]
        stream = style != "sdk" or rng.random() < 0.5
        accounts = ctx.count(p.accounts_per_pool)
        for a in range(accounts):
            phase = interval * a / accounts
            sources.append(
                _pool_account(ctx, p, pool, a, interval, phase, sticky, templates, style, stream)
            )
    return sources


def _pool_account(
    ctx: SimContext,
    p: ResiPool,
    pool: int,
    index: int,
    interval: float,
    phase: float,
    sticky: float,
    templates: list[int],
    style: str,
    stream: bool,
) -> Source:
    rng = ctx.rng("resi_pool", pool, index)
    exits = ProxyExits(ctx.world, rng, p.flagged_share, p.mobile_share, p.ipv6_share)
    country = rng.choices(exits.countries, weights=exits.weights)[0]
    if style == "sdk":
        persona = personas.openai_python(rng)
        path, key = API_PATH, new_key(rng)
    else:
        fidelity = 0.15 if style == "forged_browser" else 0.85
        persona = personas.forged_browser(rng, country, fidelity)
        path, key = WEB_PATH, new_key(rng, "acct_")
    em = Emitter(ctx, f"resi_pool/pool{pool}/acct{index:04d}", LABEL, "resi_pool", key, persona)
    horizon = ctx.horizon
    begin = rng.uniform(0.0, 0.3 * horizon)
    end = begin + rng.uniform(0.6, 1.0) * (horizon - begin)
    t = begin + phase
    ip, ip_until = "", -1.0
    while t < end:
        if t >= ip_until:
            ip = exits.exit()
            ip_until = t + sticky
        body = _harvest_body(rng, templates, p.elicitation_share, stream=stream, max_tokens=8192)
        out = origin(rng, len(body), 1400.0, 0.5, 8192, p.error_rate)
        yield em.line(t, ip, "POST", path, body, out)
        t += interval * rng.uniform(1.0 - p.jitter, 1.0 + p.jitter)


# --- routers and resellers ------------------------------------------------------------------


@dataclass
class Router:
    """Routers and resellers: hundreds of accounts behind a few hosting addresses.

    The router forwards its own customers' traffic (a daily-shaped Poisson stream of mixed
    prompts) and spreads it over its accounts, least recently used first, all with one
    forged SDK persona (an OpenAI-python User-Agent over a stale ``x-stainless`` set).
    """

    routers: int = 2
    accounts_per_router: int = 220
    rate: float = 0.8
    egress_ips_min: int = 3
    egress_ips_max: int = 6
    error_rate: float = 0.02


def router(ctx: SimContext, p: Router) -> list[Source]:
    return [_router(ctx, p, r) for r in range(ctx.count(p.routers))]


def _router(ctx: SimContext, p: Router, index: int) -> Source:
    rng = ctx.rng("router", index)
    world = ctx.world
    net = world.pick(rng, HOSTING)
    egress = [
        world.v4(rng, net)
        for _ in range(rng.randint(p.egress_ips_min, max(p.egress_ips_min, p.egress_ips_max)))
    ]
    persona = personas.forged_sdk(rng)
    emitters = [
        Emitter(ctx, f"router/r{index}/acct{a:04d}", LABEL, "router", new_key(rng), persona)
        for a in range(ctx.count(p.accounts_per_router))
    ]
    lru: list[tuple[float, int]] = [(rng.random() * -1.0, a) for a in range(len(emitters))]
    heapq.heapify(lru)
    for t in ctx.arrival_times(rng, p.rate, "US", floor=0.3):
        _, account = heapq.heapreplace(lru, (t, lru[0][1]))
        em = emitters[account]
        roll = rng.random()
        if roll < 0.5:
            messages = [{"role": "user", "content": prompts.free_prompt(rng)}]
            median = 400.0
        elif roll < 0.8:
            system, user = prompts.app_prompt(rng, rng.randrange(len(prompts.APP_TEMPLATES)))
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            median = 150.0
        else:
            template = rng.randrange(len(prompts.ELICITATION_TEMPLATES))
            messages = [{"role": "user", "content": prompts.elicitation_prompt(rng, template)}]
            median = 1400.0
        model = prompts.MODEL_BEST if rng.random() < 0.5 else rng.choice(prompts.MODELS_CHEAP)
        body = prompts.chat_body(model, messages, stream=True)
        out = origin(rng, len(body), median, 0.6, 8192, p.error_rate)
        yield em.line(t, rng.choice(egress), "POST", API_PATH, body, out)


# --- scripted bulk harvesting ----------------------------------------------------------------


@dataclass
class BulkHarvest:
    """Scripted bulk harvesting: few accounts, high volume, HTTP-library User-Agents.

    Each script runs ``workers`` loops for a few hours; a loop sends the next templated
    elicitation prompt as soon as the previous answer arrives, and retries errors at
    once (it ignores Retry-After). Most run from a cloud server, some from home; some
    rotate through their IPv6 /64 on every request.
    """

    actors: int = 6
    workers_min: int = 2
    workers_max: int = 12
    hours_min: float = 0.75
    hours_max: float = 3.0
    home_share: float = 0.3
    ipv6_rotation_share: float = 0.2
    error_rate: float = 0.02


def bulk_harvest(ctx: SimContext, p: BulkHarvest) -> list[Source]:
    return [_bulk_script(ctx, p, i) for i in range(ctx.count(p.actors))]


def _bulk_script(ctx: SimContext, p: BulkHarvest, index: int) -> Source:
    rng = ctx.rng("bulk_harvest", index)
    world = ctx.world
    em = Emitter(
        ctx,
        f"bulk_harvest/script{index:02d}",
        LABEL,
        "bulk_harvest",
        new_key(rng),
        personas.http_library(rng),
    )
    address: Callable[[], str]
    if rng.random() < p.home_share:
        home_ip = world.v4(rng, world.pick(rng, RESIDENTIAL))
        address = lambda: home_ip  # noqa: E731
    else:
        net = world.pick(rng, HOSTING)
        if rng.random() < p.ipv6_rotation_share and world.has_v6(net):
            prefix = world.v6_prefix(rng, net)
            address = lambda: world.v6(rng, net, prefix)  # noqa: E731
        else:
            ips = [world.v4(rng, net) for _ in range(rng.randint(1, 2))]
            address = lambda: rng.choice(ips)  # noqa: E731
    templates = rng.sample(range(len(prompts.ELICITATION_TEMPLATES)), rng.randint(1, 2))
    workers = rng.randint(p.workers_min, max(p.workers_min, p.workers_max))
    active = rng.uniform(p.hours_min, max(p.hours_min, p.hours_max)) * 3600.0
    begin = rng.uniform(0.0, max(0.0, ctx.horizon - active))
    end = min(ctx.horizon, begin + active)
    clocks = [(begin + rng.uniform(0.0, 2.0), w) for w in range(workers)]
    heapq.heapify(clocks)
    while clocks:
        t, w = heapq.heappop(clocks)
        if t >= end:
            continue
        body = _harvest_body(rng, templates, 1.0, stream=False, max_tokens=8192)
        out = origin(rng, len(body), 1400.0, 0.45, 8192, p.error_rate)
        yield em.line(t, address(), "POST", API_PATH, body, out)
        pause = 0.0 if out.status != 200 else rng.uniform(0.01, 0.3)
        heapq.heappush(clocks, (t + out.duration + pause, w))


# --- low and slow ----------------------------------------------------------------------------


@dataclass
class LowAndSlow:
    """Low-and-slow harvesting that stays under every per-account limit.

    Hundreds of accounts each send one request every few minutes with clockwork
    regularity, over a cloud address or a sticky residential exit of their own. What
    gives them away is shared: the same script (persona) and the same few prompt
    templates across all accounts.
    """

    accounts: int = 300
    interval_median: float = 420.0
    jitter: float = 0.08
    shared_templates: int = 3
    hosting_share: float = 0.5
    flagged_share: float = 0.5
    shared_persona_share: float = 0.7
    error_rate: float = 0.015


def low_and_slow(ctx: SimContext, p: LowAndSlow) -> list[Source]:
    rng = ctx.rng("low_and_slow", "operation")
    count = max(1, min(p.shared_templates, len(prompts.ELICITATION_TEMPLATES)))
    templates = rng.sample(range(len(prompts.ELICITATION_TEMPLATES)), count)
    shared = personas.openai_python(rng)
    interval = lognormal(rng, p.interval_median, 0.15)
    return [
        _slow_account(ctx, p, i, templates, shared, interval) for i in range(ctx.count(p.accounts))
    ]


def _slow_account(
    ctx: SimContext,
    p: LowAndSlow,
    index: int,
    templates: list[int],
    shared: personas.Persona,
    interval: float,
) -> Source:
    rng = ctx.rng("low_and_slow", index)
    world = ctx.world
    if rng.random() < p.hosting_share:
        ip = world.v4(rng, world.pick(rng, HOSTING))
    else:
        ip = ProxyExits(world, rng, p.flagged_share, 0.0, 0.0).exit()
    persona = shared if rng.random() < p.shared_persona_share else personas.sdk(rng)
    em = Emitter(ctx, f"low_and_slow/acct{index:04d}", LABEL, "low_and_slow", new_key(rng), persona)
    horizon = ctx.horizon
    begin = rng.uniform(0.0, 0.4 * horizon)
    end = begin + rng.uniform(0.5, 1.0) * (horizon - begin)
    every = interval * rng.uniform(0.9, 1.1)
    t = begin
    while t < end:
        body = _harvest_body(rng, templates, 1.0, stream=False, max_tokens=4096)
        out = origin(rng, len(body), 1200.0, 0.5, 4096, p.error_rate)
        yield em.line(t, ip, "POST", API_PATH, body, out)
        t += every * rng.uniform(1.0 - p.jitter, 1.0 + p.jitter)


# --- tor ------------------------------------------------------------------------------------


@dataclass
class Tor:
    """Harvesting over Tor: the exit changes with every circuit (about every 10 minutes).

    Some use Tor Browser by hand on the web app (human pauses), most script the API
    through a SOCKS proxy with an HTTP library.
    """

    actors: int = 24
    sessions_max: int = 3
    session_minutes_min: float = 20.0
    session_minutes_max: float = 90.0
    script_interval: float = 15.0
    browser_share: float = 0.35
    circuit_minutes: float = 10.0
    elicitation_share: float = 0.7
    error_rate: float = 0.03


def tor(ctx: SimContext, p: Tor) -> list[Source]:
    return [_tor_user(ctx, p, i) for i in range(ctx.count(p.actors))]


def _tor_user(ctx: SimContext, p: Tor, index: int) -> Source:
    rng = ctx.rng("tor", index)
    exits = ctx.world.tor_exits
    browser = rng.random() < p.browser_share
    persona = personas.tor_browser(rng) if browser else personas.http_library(rng)
    key = new_key(rng, "acct_") if browser else new_key(rng)
    path = WEB_PATH if browser else API_PATH
    em = Emitter(ctx, f"tor/user{index:02d}", LABEL, "tor", key, persona)
    templates = rng.sample(range(len(prompts.ELICITATION_TEMPLATES)), 2)
    horizon = ctx.horizon
    starts = sorted(rng.uniform(0.0, horizon) for _ in range(rng.randint(1, p.sessions_max)))
    last = 0.0
    for start in starts:
        t = max(start, last + 60.0)
        stop = min(horizon, t + rng.uniform(p.session_minutes_min, p.session_minutes_max) * 60)
        ip, circuit_until = rng.choice(exits), t + p.circuit_minutes * 60.0
        while t < stop:
            if t >= circuit_until:
                ip, circuit_until = rng.choice(exits), t + p.circuit_minutes * 60.0
            body = _harvest_body(
                rng, templates, p.elicitation_share, stream=browser, max_tokens=4096
            )
            out = origin(rng, len(body), 1200.0, 0.5, 4096, p.error_rate)
            yield em.line(t, ip, "POST", path, body, out)
            gap = lognormal(rng, 45.0, 0.8) if browser else lognormal(rng, p.script_interval, 0.3)
            t += out.duration + gap
        last = t
