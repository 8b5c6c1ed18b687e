"""Benign scenarios: people in browsers and apps, app backends, campus, mobile, corporate VPN."""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass

from abuseguard.sim import personas, prompts
from abuseguard.sim.core import (
    HUMAN_DAY,
    WORK_DAY,
    Emitter,
    Outcome,
    SimContext,
    Source,
    lognormal,
    new_key,
    origin,
)
from abuseguard.sim.world import CORPORATE, EDUCATION, HOSTING, MOBILE, RESIDENTIAL, VPN, Network

LABEL = "benign"

# Where the service's human users live (weights).
USER_COUNTRIES: tuple[tuple[str, float], ...] = (
    ("US", 34),
    ("GB", 7),
    ("DE", 7),
    ("IN", 8),
    ("FR", 5),
    ("BR", 5),
    ("CA", 4),
    ("JP", 4),
    ("ES", 3),
    ("IT", 3),
    ("NL", 2),
    ("AU", 2),
    ("KR", 2),
    ("MX", 3),
    ("TR", 1),
    ("PL", 1),
    ("VN", 1),
    ("ID", 1),
    ("PH", 1),
)

IpFor = Callable[[float], str]


def fixed(ip: str) -> IpFor:
    """An address that does not change during the session."""
    return lambda _t: ip


def pick_country(rng: random.Random) -> str:
    names = [name for name, _ in USER_COUNTRIES]
    weights = [weight for _, weight in USER_COUNTRIES]
    return rng.choices(names, weights=weights)[0]


def session_starts(
    ctx: SimContext, rng: random.Random, count: int, country: str, day: tuple[float, ...]
) -> list[float]:
    """``count`` session start times over the window, following the daily rhythm."""
    starts: list[float] = []
    attempts = 0
    while len(starts) < count and attempts < count * 200:
        attempts += 1
        t = rng.uniform(0.0, ctx.horizon)
        if rng.random() < ctx.activity(t, country, day):
            starts.append(t)
    starts.sort()
    return starts


def chat_session(
    ctx: SimContext,
    rng: random.Random,
    em: Emitter,
    t: float,
    ip_for: IpFor,
    messages: int,
    think_median: float,
    think_sigma: float,
    error_rate: float,
    *,
    path: str = "/api/chat",
    opening: str | None = None,
) -> Generator[tuple[float, str], None, float]:
    """One person's conversation: open the app, then messages separated by think time.

    Returns the time the session ended. ``opening`` replaces the first free prompt.
    """
    horizon = ctx.horizon
    if t >= horizon:
        return t
    ip = ip_for(t)
    yield em.line(t, ip, "GET", "/api/conversations", None, Outcome(200, 0, rng.uniform(0.03, 0.2)))
    t += rng.uniform(1.5, 15.0)
    model = rng.choice(prompts.MODELS_CHEAP) if rng.random() > 0.15 else prompts.MODEL_BEST
    history: list[dict[str, str]] = []
    prompt = opening or prompts.free_prompt(rng)
    for _ in range(messages):
        if t >= horizon:
            break
        body = prompts.chat_body(
            model, [*history[-4:], {"role": "user", "content": prompt}], stream=True
        )
        out = origin(rng, len(body), 380.0, 0.8, 4096, error_rate)
        yield em.line(t, ip_for(t), "POST", path, body, out)
        t += out.duration
        if out.status == 200 and rng.random() < 0.03:
            # "regenerate": the same request again a moment later
            t += rng.uniform(1.0, 5.0)
            if t < horizon:
                again = origin(rng, len(body), 380.0, 0.8, 4096, error_rate)
                yield em.line(t, ip_for(t), "POST", path, body, again)
                t += again.duration
        history += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": prompts.assistant_reply(rng)},
        ]
        prompt = prompts.follow_up(rng) if rng.random() < 0.6 else prompts.free_prompt(rng)
        t += lognormal(rng, think_median, think_sigma) + len(prompt) * rng.uniform(0.12, 0.3)
    return t


# --- browser chat ---------------------------------------------------------------------------


@dataclass
class BrowserChat:
    """People chatting in desktop browsers from home.

    Sessions follow their local day; messages are separated by lognormal think times; a
    few heavy users chat all day. Some have IPv6 at home (a fixed /64, the interface ID
    changes per session), some use a consumer VPN, a few have a home address that an
    anonymizer database flags as a residential proxy with low confidence.
    """

    users: int = 320
    sessions_mean: float = 2.5
    messages_median: float = 6.0
    think_median: float = 40.0
    think_sigma: float = 1.0
    heavy_share: float = 0.08
    ipv6_share: float = 0.35
    vpn_share: float = 0.05
    flagged_home_share: float = 0.02
    error_rate: float = 0.012


def browser_chat(ctx: SimContext, p: BrowserChat) -> list[Source]:
    return [_browser_user(ctx, p, i) for i in range(ctx.count(p.users))]


def home_address(ctx: SimContext, rng: random.Random, country: str, ipv6: bool) -> IpFor:
    """A household's address: fixed IPv4, or a fixed /64 with a new interface ID per call."""
    world = ctx.world
    net = world.pick(rng, RESIDENTIAL, country)
    if ipv6 and world.has_v6(net):
        prefix = world.v6_prefix(rng, net)
        return lambda _t: world.v6(rng, net, prefix)
    ip = world.v4(rng, net)
    return lambda _t: ip


def _browser_user(ctx: SimContext, p: BrowserChat, index: int) -> Source:
    rng = ctx.rng("browser_chat", index)
    country = pick_country(rng)
    world = ctx.world
    persona = personas.desktop_browser(rng, country)
    em = Emitter(
        ctx, f"browser_chat/user{index:04d}", LABEL, "browser_chat", new_key(rng, "acct_"), persona
    )
    heavy = rng.random() < p.heavy_share
    vpn_exits: list[str] | None = None
    if rng.random() < p.vpn_share:
        vpn_exits = world.vpn_exits[world.pick(rng, VPN).asn]
    home = home_address(ctx, rng, country, rng.random() < p.ipv6_share)
    if vpn_exits is None and rng.random() < p.flagged_home_share:
        flagged = home(0.0)
        world.flag(flagged, "residential_proxy", rng.randint(5, 35), None, world.seen(rng, 60))
        home = fixed(flagged)  # the flagged address stays the household's
    n_sessions = 1 + poisson(rng, p.sessions_mean * (4.0 if heavy else 1.0) - 1.0)
    end = -math.inf
    for start in session_starts(ctx, rng, n_sessions, country, HUMAN_DAY):
        start = max(start, end + rng.uniform(60.0, 900.0))
        ip = rng.choice(vpn_exits) if vpn_exits is not None else home(start)
        messages = max(1, round(lognormal(rng, p.messages_median * (3.0 if heavy else 1.0), 0.8)))
        end = yield from chat_session(
            ctx, rng, em, start, fixed(ip), messages, p.think_median, p.think_sigma, p.error_rate
        )


def poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


# --- app backends through official SDKs -----------------------------------------------------------


@dataclass
class SdkBackend:
    """Backends of real apps calling through the official SDKs: the hard false-positive case.

    Each app is one actor with one API key, sending templated prompts at a steady,
    daily-shaped Poisson rate from 1-4 egress addresses of a cloud (hosting ASN). Some run
    a batch job (a burst of hundreds of requests at fixed concurrency); server errors are
    retried by the SDK after a backoff with ``x-stainless-retry-count`` raised; a few
    ``GET /v1/models`` calls happen at start-up.
    """

    apps: int = 22
    rate_median: float = 0.12
    rate_sigma: float = 0.8
    ips_max: int = 4
    ipv6_share: float = 0.1
    batch_share: float = 0.3
    batch_min: int = 100
    batch_max: int = 600
    error_rate: float = 0.01


_SHORT_OUTPUT_TEMPLATES = frozenset({1, 3, 5, 7})


def sdk_backend(ctx: SimContext, p: SdkBackend) -> list[Source]:
    return [_sdk_app(ctx, p, i) for i in range(ctx.count(p.apps))]


def _sdk_app(ctx: SimContext, p: SdkBackend, index: int) -> Source:
    rng = ctx.rng("sdk_backend", index)
    world = ctx.world
    net = world.pick(rng, HOSTING)
    if rng.random() < p.ipv6_share and world.has_v6(net):
        prefix = world.v6_prefix(rng, net)
        ips = [world.v6(rng, net, prefix) for _ in range(rng.randint(1, 2))]
    else:
        ips = [world.v4(rng, net) for _ in range(rng.randint(1, max(1, p.ips_max)))]
    persona = personas.sdk(rng)
    retry_persona = _retry_fragment(persona)
    em = Emitter(ctx, f"sdk_backend/app{index:03d}", LABEL, "sdk_backend", new_key(rng), persona)
    templates = rng.sample(range(len(prompts.APP_TEMPLATES)), rng.randint(1, 2))
    model = rng.choice(prompts.MODELS_CHEAP)
    max_tokens = rng.choice((256, 512, 1024, 2048))
    temperature = rng.choice((0.0, 0.2, 0.3, 0.7))
    rate = min(1.0, max(0.004, lognormal(rng, p.rate_median, p.rate_sigma)))
    users_country = rng.choice(("US", "US", "GB", "DE", "IN", "BR", "JP"))
    events: list[tuple[float, int]] = [
        (t, rng.choice(templates)) for t in ctx.arrival_times(rng, rate, users_country, floor=0.35)
    ]
    if rng.random() < p.batch_share:
        events += _batch(ctx, rng, p, rng.choice(templates))
    events.sort()
    t0 = events[0][0] - rng.uniform(1, 30) if events else 0.0
    if t0 > 0:
        yield em.line(t0, ips[0], "GET", "/v1/models", None, Outcome(200, 0, 0.08))
    retries: list[tuple[float, str, str, float]] = []  # (at, ip, body, median), by time
    for t, template in events:
        while retries and retries[0][0] <= t:
            at, ip, body, median = heapq.heappop(retries)
            again = origin(rng, len(body), median, 0.5, max_tokens, p.error_rate / 4)
            yield em.line(at, ip, "POST", "/v1/chat/completions", body, again, retry_persona)
        system, user = prompts.app_prompt(rng, template)
        body = prompts.chat_body(
            model,
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            stream=False,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        median = 12.0 if template in _SHORT_OUTPUT_TEMPLATES else 220.0
        out = origin(rng, len(body), median, 0.5, max_tokens, p.error_rate)
        ip = rng.choice(ips)
        yield em.line(t, ip, "POST", "/v1/chat/completions", body, out)
        if out.status >= 500 or out.status == 408:
            # the SDK retries after an exponential backoff, raising x-stainless-retry-count
            at = t + out.duration + rng.uniform(0.4, 1.0) * 2 ** rng.randint(0, 2)
            if at < ctx.horizon:
                heapq.heappush(retries, (at, ip, body, median))
    for at, ip, body, median in sorted(retries):
        again = origin(rng, len(body), median, 0.5, max_tokens, p.error_rate / 4)
        yield em.line(at, ip, "POST", "/v1/chat/completions", body, again, retry_persona)


def _retry_fragment(persona: personas.Persona) -> str:
    headers = tuple(
        (name, "1" if name == "x-stainless-retry-count" else value)
        for name, value in persona.headers
    )
    return personas.Persona(persona.family, persona.ua, headers).fragment()


def _batch(
    ctx: SimContext, rng: random.Random, p: SdkBackend, template: int
) -> list[tuple[float, int]]:
    """A batch job: N requests through a pool of C workers, each waits for its response."""
    total = rng.randint(p.batch_min, p.batch_max)
    workers = rng.choice((4, 8, 8, 16))
    start = rng.uniform(0.0, ctx.horizon * 0.8)
    clocks = [start + rng.uniform(0, 0.5) for _ in range(workers)]
    out: list[tuple[float, int]] = []
    for i in range(total):
        w = i % workers
        out.append((clocks[w], template))
        clocks[w] += lognormal(rng, 2.5, 0.5) + 0.02
    return [(t, tpl) for t, tpl in out if t < ctx.horizon]


# --- campus NAT -----------------------------------------------------------------------------


@dataclass
class CampusNat:
    """About a hundred students behind one university NAT address (education ASN).

    Students chat in browsers in campus hours. During one lab session a share of them
    paste the same assignment question within the same hour: one address, many accounts,
    one template, and all of it legitimate.
    """

    students: int = 100
    nat_ips: int = 2
    sessions_mean: float = 1.6
    messages_median: float = 5.0
    think_median: float = 50.0
    assignment_share: float = 0.35
    error_rate: float = 0.012


def campus_nat(ctx: SimContext, p: CampusNat) -> list[Source]:
    rng = ctx.rng("campus_nat", "campus")
    world = ctx.world
    net = world.pick(rng, EDUCATION)
    nat = [world.v4(rng, net) for _ in range(max(1, p.nat_ips))]
    lab_start = rng.uniform(0.0, max(0.0, ctx.horizon - 3600.0))
    question = prompts.elicitation_prompt(rng, 6).replace(
        "Explain, as a teacher would to a student, every step", "Show the steps"
    )
    return [
        _student(ctx, p, i, net, nat, lab_start, question) for i in range(ctx.count(p.students))
    ]


def _student(
    ctx: SimContext,
    p: CampusNat,
    index: int,
    net: Network,
    nat: list[str],
    lab_start: float,
    question: str,
) -> Source:
    rng = ctx.rng("campus_nat", index)
    persona = (
        personas.safari(rng, net.country)
        if rng.random() < 0.35
        else personas.desktop_browser(rng, net.country)
    )
    em = Emitter(
        ctx, f"campus_nat/student{index:03d}", LABEL, "campus_nat", new_key(rng, "acct_"), persona
    )
    weights = [0.85] + [0.15 / max(1, len(nat) - 1)] * (len(nat) - 1)
    ip = rng.choices(nat, weights=weights)[0]
    starts = session_starts(
        ctx, rng, 1 + poisson(rng, p.sessions_mean - 1.0), net.country, WORK_DAY
    )
    in_lab = rng.random() < p.assignment_share
    plan: list[tuple[float, str | None, int]] = [(s, None, 0) for s in starts]
    if in_lab:
        plan.append((lab_start + rng.uniform(0, 2400.0), question, rng.randint(2, 6)))
        plan.sort(key=lambda item: item[0])
    end = -math.inf
    for start, opening, messages in plan:
        start = max(start, end + rng.uniform(30.0, 300.0))
        if not messages:
            messages = max(1, round(lognormal(rng, p.messages_median, 0.8)))
        end = yield from chat_session(
            ctx,
            rng,
            em,
            start,
            fixed(ip),
            messages,
            p.think_median,
            1.0,
            p.error_rate,
            opening=opening,
        )


# --- mobile users ------------------------------------------------------------------------------


@dataclass
class MobileRoaming:
    """People on phones: short sessions, a new address almost every time.

    IPv4 comes from the carrier's carrier-grade NAT pool (shared with everyone on the
    carrier, including the occasional mobile proxy), IPv6 from a fresh /64 per session;
    handovers change the address mid-session; at home the phone is on Wi-Fi (a residential
    ISP), and a few users travel and use a hotel network abroad.
    """

    users: int = 80
    sessions_mean: float = 5.0
    messages_median: float = 3.0
    think_median: float = 25.0
    wifi_share: float = 0.3
    ipv6_share: float = 0.5
    handover_share: float = 0.2
    abroad_share: float = 0.04
    error_rate: float = 0.015


def mobile_roaming(ctx: SimContext, p: MobileRoaming) -> list[Source]:
    return [_mobile_user(ctx, p, i) for i in range(ctx.count(p.users))]


def _mobile_user(ctx: SimContext, p: MobileRoaming, index: int) -> Source:
    rng = ctx.rng("mobile_roaming", index)
    world = ctx.world
    carrier = world.pick(rng, MOBILE)
    country = carrier.country
    em = Emitter(
        ctx,
        f"mobile_roaming/user{index:03d}",
        LABEL,
        "mobile_roaming",
        new_key(rng, "acct_"),
        personas.mobile_client(rng, country),
    )
    ipv6 = rng.random() < p.ipv6_share and world.has_v6(carrier)
    home = home_address(ctx, rng, country, ipv6=False)
    pool = world.cgnat[carrier.asn]
    n_sessions = 1 + poisson(rng, p.sessions_mean - 1.0)
    end = -math.inf
    for start in session_starts(ctx, rng, n_sessions, country, HUMAN_DAY):
        start = max(start, end + rng.uniform(60.0, 600.0))
        roll = rng.random()
        ip_for: IpFor
        if roll < p.abroad_share:
            abroad = world.pick(rng, RESIDENTIAL)
            hotel = world.v4(rng, abroad)
            ip_for = fixed(hotel)
        elif roll < p.abroad_share + p.wifi_share:
            wifi = home(start)
            ip_for = fixed(wifi)
        elif ipv6:
            prefix = world.v6_prefix(rng, carrier)
            address = world.v6(rng, carrier, prefix)
            ip_for = fixed(address)
        else:
            ip_for = _cgnat_session(rng, pool, start, p.handover_share)
        messages = max(1, round(lognormal(rng, p.messages_median, 0.8)))
        end = yield from chat_session(
            ctx, rng, em, start, ip_for, messages, p.think_median, 1.1, p.error_rate
        )


def _cgnat_session(rng: random.Random, pool: list[str], start: float, handover: float) -> IpFor:
    first = rng.choice(pool)
    if rng.random() >= handover:
        return lambda _t: first
    switch_at = start + rng.uniform(20.0, 300.0)
    second = rng.choice(pool)
    return lambda t: first if t < switch_at else second


# --- corporate VPN ---------------------------------------------------------------------------


@dataclass
class CorporateVpn:
    """Employees behind their company's VPN or secure web gateway.

    A handful of egress addresses (flagged ``vpn`` with low to middling confidence) carry
    many accounts with human timing in office hours. A few analysts run notebook loops
    through the official SDK (sequential templated requests): legitimate automation.
    """

    companies: int = 3
    employees_min: int = 12
    employees_max: int = 30
    egress_ips_max: int = 4
    sessions_mean: float = 2.5
    messages_median: float = 5.0
    think_median: float = 60.0
    sdk_share: float = 0.15
    error_rate: float = 0.01


def corporate_vpn(ctx: SimContext, p: CorporateVpn) -> list[Source]:
    sources: list[Source] = []
    for c in range(ctx.count(p.companies)):
        rng = ctx.rng("corporate_vpn", "company", c)
        world = ctx.world
        net = world.pick(rng, CORPORATE)
        egress = [world.v4(rng, net) for _ in range(rng.randint(2, max(2, p.egress_ips_max)))]
        for ip in egress:
            world.flag(ip, "vpn", rng.randint(15, 60), None, world.seen(rng, 14))
        language = personas.accept_language(rng, net.country)
        for e in range(rng.randint(p.employees_min, max(p.employees_min, p.employees_max))):
            sources.append(_employee(ctx, p, c, e, net, egress, language))
    return sources


def _employee(
    ctx: SimContext,
    p: CorporateVpn,
    company: int,
    index: int,
    net: Network,
    egress: list[str],
    language: str,
) -> Source:
    rng = ctx.rng("corporate_vpn", company, index)
    analyst = rng.random() < p.sdk_share
    if analyst:
        persona = personas.openai_python(rng, os_name=rng.choice(("Linux", "MacOS", "Windows")))
    else:
        persona = personas.chrome(rng, net.country, platform="Windows")
        persona = personas.Persona(
            persona.family,
            persona.ua,
            tuple((k, language if k == "accept-language" else v) for k, v in persona.headers),
        )
    em = Emitter(
        ctx,
        f"corporate_vpn/co{company}/emp{index:02d}",
        LABEL,
        "corporate_vpn",
        new_key(rng, "sk-" if analyst else "acct_"),
        persona,
    )
    n_sessions = 1 + poisson(rng, p.sessions_mean - 1.0)
    end = -math.inf
    for start in session_starts(ctx, rng, n_sessions, net.country, WORK_DAY):
        start = max(start, end + rng.uniform(60.0, 900.0))
        ip = rng.choice(egress)
        if analyst:
            end = yield from _notebook_run(ctx, rng, em, start, ip, p.error_rate)
            continue
        messages = max(1, round(lognormal(rng, p.messages_median, 0.8)))
        end = yield from chat_session(
            ctx, rng, em, start, fixed(ip), messages, p.think_median, 1.0, p.error_rate
        )


def _notebook_run(
    ctx: SimContext, rng: random.Random, em: Emitter, t: float, ip: str, error_rate: float
) -> Generator[tuple[float, str], None, float]:
    """A notebook cell looping over rows: one request after the other, same template."""
    template = rng.randrange(len(prompts.APP_TEMPLATES))
    for _ in range(rng.randint(20, 120)):
        if t >= ctx.horizon:
            break
        system, user = prompts.app_prompt(rng, template)
        body = prompts.chat_body(
            "atlas-1-mini",
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            stream=False,
            temperature=0.0,
        )
        out = origin(rng, len(body), 60.0, 0.6, 1024, error_rate)
        yield em.line(t, ip, "POST", "/v1/chat/completions", body, out)
        t += out.duration + rng.uniform(0.05, 0.6)
    return t
