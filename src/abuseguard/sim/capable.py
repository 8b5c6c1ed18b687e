"""The capable adversary of 2026 and the honest heavy users a detector must leave alone.

Written from public accounts rather than from the detector: OpenAI's February 2026 memo on
distillation, Anthropic's 2026 disclosure (about 24,000 accounts and over 16 million
exchanges through proxy "hydra" networks) and Google GTIG's February 2026 report of a
100,000-prompt campaign coercing reasoning traces, much of it not in English. Their
operators spread the work over hundreds of accounts on residential exits that commercial
databases mostly do not flag, present a genuine persona (a real browser's header set or the
official SDK's exact headers), keep human-like timing and stay under per-account limits,
and send diverse, non-templated prompts that sweep a taxonomy of subjects asking for the
reasoning in many phrasings and languages. Each request is unremarkable; the operation
is not.

The honest side is what such a detector hurts: evaluation harnesses running public
benchmarks with many workers from one cloud address, researchers and students who ask for
step-by-step reasoning in their own language, and developers testing a prompt in a loop.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

from abuseguard.sim import multilingual, personas, prompts
from abuseguard.sim.abusive import API_PATH, PROXY_COUNTRIES, WEB_PATH, ProxyExits
from abuseguard.sim.benign import fixed, home_address, pick_country, poisson, session_starts
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
from abuseguard.sim.world import CORPORATE, EDUCATION, HOSTING, RESIDENTIAL

ABUSIVE = "abusive"
BENIGN = "benign"

# What an operation writes in (weights): mostly English, a large non-English share.
OPERATION_LANGUAGES = {
    "en": 0.5, "zh": 0.14, "es": 0.07, "ru": 0.06, "ko": 0.05, "ja": 0.05, "pt": 0.05,
    "fr": 0.04, "de": 0.04,
}  # fmt: skip

OPERATION_SYSTEM_PROMPTS = (
    "You are a meticulous expert. Reason carefully and completely before answering.",
    "You are a helpful assistant. Always explain your reasoning in full, then answer.",
    "You are an expert tutor who never skips steps.",
)


def _events_in_order(events: list[tuple[float, str]]) -> Source:
    events.sort(key=lambda e: e[0])
    yield from events


def _session_count(ctx: SimContext, rng: random.Random, per_day: float) -> int:
    return 1 + poisson(rng, max(0.0, per_day * ctx.hours / 24.0 - 1.0))


# --- the operation (hydra) --------------------------------------------------------------------


@dataclass
class Hydra:
    """A capable distillation operation: hundreds of accounts, each an ordinary-looking user.

    Every account keeps one genuine persona (a real browser on the web app, or the official
    SDK's exact headers at the operation's pinned version) and a home country; each session
    leaves through a fresh residential exit (mostly unflagged, some behind carrier NATs
    shared with real phones), in daytime of that country, with a few workers waiting on
    long answers and lognormal gaps between requests. Prompts sweep a subject taxonomy in
    several languages, each asking for the reasoning in a varied phrasing; the request shape
    (model, max_tokens, temperature) is the operation's, and some requests carry one of its
    few system prompts.
    """

    operations: int = 2
    accounts_per_operation: int = 160
    sessions_per_day: float = 4.0
    session_requests_median: float = 15.0
    workers_max: int = 3
    gap_median: float = 40.0
    gap_sigma: float = 0.9
    flagged_share: float = 0.08
    mobile_share: float = 0.15
    browser_share: float = 0.4
    exit_in_home_country: float = 0.7
    system_prompt_share: float = 0.4
    multi_turn_share: float = 0.1
    coerce_trace_share: float = 0.0
    error_rate: float = 0.02


def hydra(ctx: SimContext, p: Hydra) -> list[Source]:
    sources: list[Source] = []
    for op in range(ctx.count(p.operations)):
        rng = ctx.rng("hydra", op)
        shape = _OperationShape(rng)
        for a in range(ctx.count(p.accounts_per_operation)):
            sources.append(_hydra_account(ctx, p, "hydra", op, a, shape))
    return sources


class _OperationShape:
    """What one operation's tooling fixes across its accounts."""

    def __init__(self, rng: random.Random) -> None:
        self.sdk_version = rng.choice(personas.OPENAI_PY_VERSIONS)
        self.runtime = rng.choice(personas.PY_RUNTIMES)
        self.max_tokens = rng.choice((8192, 12000, 16384))
        self.temperature = rng.choice((None, 0.6, 0.7))
        self.system_prompts = rng.sample(OPERATION_SYSTEM_PROMPTS, 2)
        self.subjects = list(multilingual.SUBJECTS)
        rng.shuffle(self.subjects)


def _hydra_account(
    ctx: SimContext, p: Hydra, kind: str, op: int, index: int, shape: _OperationShape
) -> Source:
    rng = ctx.rng(kind, op, index)
    world = ctx.world
    exits = ProxyExits(world, rng, p.flagged_share, p.mobile_share, 0.05)
    countries = [name for name, _ in PROXY_COUNTRIES]
    weights = [weight for _, weight in PROXY_COUNTRIES]
    home = rng.choices(countries, weights=weights)[0]
    browser = rng.random() < p.browser_share
    if browser:
        persona = personas.desktop_browser(rng, home)
        path, key = WEB_PATH, new_key(rng, "acct_")
        stream = True
    else:
        persona = personas.openai_python(rng, version=shape.sdk_version, runtime=shape.runtime)
        path, key = API_PATH, new_key(rng)
        stream = rng.random() < 0.5
    em = Emitter(ctx, f"{kind}/op{op}/acct{index:04d}", ABUSIVE, kind, key, persona)
    events: list[tuple[float, str]] = []
    # each account works through its own stretch of the operation's taxonomy
    offset = rng.randrange(len(shape.subjects))
    swept = 0
    for start in session_starts(
        ctx, rng, _session_count(ctx, rng, p.sessions_per_day), home, HUMAN_DAY
    ):
        if rng.random() < p.exit_in_home_country:
            net = world.pick(rng, RESIDENTIAL, home)
            ip = world.v4(rng, net)
        else:
            ip = exits.exit()
        budget = max(1, round(lognormal(rng, p.session_requests_median, 0.5)))
        workers = rng.randint(1, max(1, p.workers_max))
        clocks = [(start + rng.uniform(0.0, 20.0), w) for w in range(workers)]
        heapq.heapify(clocks)
        while clocks and budget > 0:
            t, w = heapq.heappop(clocks)
            if t >= ctx.horizon:
                continue
            subject = shape.subjects[(offset + swept) % len(shape.subjects)]
            swept += 1 if rng.random() < 0.7 else 0
            language = multilingual.pick_language(rng, OPERATION_LANGUAGES)
            text = multilingual.reasoning_question(
                rng, language, subject, coerce_trace=rng.random() < p.coerce_trace_share
            )
            messages: list[dict[str, str]] = []
            if rng.random() < p.system_prompt_share:
                messages.append({"role": "system", "content": rng.choice(shape.system_prompts)})
            if rng.random() < p.multi_turn_share:
                messages += [
                    {"role": "user", "content": multilingual.question(rng, language, subject)},
                    {"role": "assistant", "content": prompts.assistant_reply(rng)},
                ]
            messages.append({"role": "user", "content": text})
            body = prompts.chat_body(
                prompts.MODEL_BEST,
                messages,
                stream=stream,
                max_tokens=None if browser else shape.max_tokens,
                temperature=None if browser else shape.temperature,
            )
            out = origin(rng, len(body), 1800.0, 0.5, shape.max_tokens, p.error_rate)
            events.append(em.line(t, ip, "POST", path, body, out))
            budget -= 1
            heapq.heappush(
                clocks, (t + out.duration + lognormal(rng, p.gap_median, p.gap_sigma), w)
            )
    return _events_in_order(events)


@dataclass
class TraceCoercion:
    """A reasoning-trace coercion campaign (GTIG, February 2026): prompts that ask the model
    to write out its own internal thinking, in the language of the question, mostly not
    English, over tens of accounts on cloud and residential addresses with the official SDK.
    """

    accounts: int = 50
    sessions_per_day: float = 4.0
    session_requests_median: float = 25.0
    workers_max: int = 2
    gap_median: float = 12.0
    gap_sigma: float = 0.7
    hosting_share: float = 0.4
    flagged_share: float = 0.1
    error_rate: float = 0.02


_COERCION_LANGUAGES = {
    "en": 0.25, "zh": 0.25, "ko": 0.1, "ja": 0.1, "ru": 0.1, "es": 0.08, "pt": 0.06,
    "fr": 0.03, "de": 0.03,
}  # fmt: skip


def trace_coercion(ctx: SimContext, p: TraceCoercion) -> list[Source]:
    rng = ctx.rng("trace_coercion", "campaign")
    shape = _OperationShape(rng)
    return [_coercion_account(ctx, p, i, shape) for i in range(ctx.count(p.accounts))]


def _coercion_account(
    ctx: SimContext, p: TraceCoercion, index: int, shape: _OperationShape
) -> Source:
    rng = ctx.rng("trace_coercion", index)
    world = ctx.world
    if rng.random() < p.hosting_share:
        ip_of = fixed(world.v4(rng, world.pick(rng, HOSTING)))
    else:
        exit_ip = ProxyExits(world, rng, p.flagged_share, 0.1, 0.0).exit()
        ip_of = fixed(exit_ip)
    persona = personas.openai_python(rng, version=shape.sdk_version, runtime=shape.runtime)
    em = Emitter(
        ctx, f"trace_coercion/acct{index:04d}", ABUSIVE, "trace_coercion", new_key(rng), persona
    )
    events: list[tuple[float, str]] = []
    country = rng.choice(("US", "CN", "KR", "RU", "BR", "VN"))
    for start in session_starts(
        ctx, rng, _session_count(ctx, rng, p.sessions_per_day), country, HUMAN_DAY
    ):
        budget = max(1, round(lognormal(rng, p.session_requests_median, 0.5)))
        clocks = [(start + rng.uniform(0.0, 5.0), w) for w in range(rng.randint(1, p.workers_max))]
        heapq.heapify(clocks)
        while clocks and budget > 0:
            t, w = heapq.heappop(clocks)
            if t >= ctx.horizon:
                continue
            language = multilingual.pick_language(rng, _COERCION_LANGUAGES)
            subject = rng.choice(multilingual.SUBJECTS)
            text = multilingual.reasoning_question(rng, language, subject, coerce_trace=True)
            body = prompts.chat_body(
                prompts.MODEL_BEST,
                [{"role": "user", "content": text}],
                stream=False,
                max_tokens=shape.max_tokens,
            )
            out = origin(rng, len(body), 2200.0, 0.5, shape.max_tokens, p.error_rate)
            events.append(em.line(t, ip_of(t), "POST", API_PATH, body, out))
            budget -= 1
            heapq.heappush(
                clocks, (t + out.duration + lognormal(rng, p.gap_median, p.gap_sigma), w)
            )
    return _events_in_order(events)


@dataclass
class Reseller:
    """A reseller forging the official SDK exactly (current version, matching headers),
    spreading its customers' traffic (a share of it harvesting reasoning for a student
    model) over a pool of accounts, each with a sticky residential exit or a cloud egress.
    """

    resellers: int = 2
    accounts_per_reseller: int = 120
    rate: float = 0.6
    harvest_share: float = 0.45
    hosting_share: float = 0.3
    flagged_share: float = 0.1
    error_rate: float = 0.02


def reseller(ctx: SimContext, p: Reseller) -> list[Source]:
    return [_reseller(ctx, p, r) for r in range(ctx.count(p.resellers))]


def _reseller(ctx: SimContext, p: Reseller, index: int) -> Source:
    rng = ctx.rng("reseller", index)
    world = ctx.world
    version = rng.choice(personas.OPENAI_PY_VERSIONS)
    cloud = world.pick(rng, HOSTING)
    accounts: list[tuple[Emitter, str]] = []
    for a in range(ctx.count(p.accounts_per_reseller)):
        persona = personas.openai_python(rng, version=version, asyncio=True)
        em = Emitter(
            ctx, f"reseller/r{index}/acct{a:04d}", ABUSIVE, "reseller", new_key(rng), persona
        )
        if rng.random() < p.hosting_share:
            ip = world.v4(rng, cloud)
        else:
            ip = ProxyExits(world, rng, p.flagged_share, 0.1, 0.0).exit()
        accounts.append((em, ip))
    lru: list[tuple[float, int]] = [(-rng.random(), a) for a in range(len(accounts))]
    heapq.heapify(lru)
    for t in ctx.arrival_times(rng, p.rate, "US", floor=0.3):
        _, account = heapq.heapreplace(lru, (t, lru[0][1]))
        em, ip = accounts[account]
        if rng.random() < p.harvest_share:
            language = multilingual.pick_language(rng, OPERATION_LANGUAGES)
            text = multilingual.reasoning_question(rng, language, rng.choice(multilingual.SUBJECTS))
            messages = [{"role": "user", "content": text}]
            median, model = 1800.0, prompts.MODEL_BEST
        else:
            messages = [{"role": "user", "content": prompts.free_prompt(rng)}]
            median, model = 350.0, rng.choice(prompts.MODELS_CHEAP)
        body = prompts.chat_body(model, messages, stream=True)
        out = origin(rng, len(body), median, 0.6, 8192, p.error_rate)
        yield em.line(t, ip, "POST", API_PATH, body, out)


# --- honest heavy users -----------------------------------------------------------------------

_MC_SUBJECTS = ("abstract_algebra", "anatomy", "college_physics", "econometrics", "world_religions")


def _mc_prompt(rng: random.Random, subject: str) -> str:
    """A public multiple-choice benchmark's prompt format (its fixed few-shot header)."""
    header = (
        f"The following are multiple choice questions (with answers) about "
        f"{subject.replace('_', ' ')}.\n\n"
    )
    q = multilingual.question(rng, "en", rng.choice(multilingual.SUBJECTS))
    options = "\n".join(f"{letter}. {rng.randint(1, 999)}" for letter in "ABCD")
    return f"{header}{q}\n{options}\nAnswer:"


def _gsm_prompt(rng: random.Random) -> str:
    """A grade-school math benchmark with chain-of-thought prompting, as harnesses run it."""
    q = prompts.elicitation_prompt(rng, 0).split("Problem: ", 1)[-1]
    return f"Question: {q}\nAnswer: Let's think step by step."


@dataclass
class EvalHarness:
    """Evaluation harnesses running public benchmarks: many workers from one cloud address,
    one or two keys, the benchmark's fixed prompt format (the same across every org that
    runs it), temperature 0, short answers or chain-of-thought, at the rate their tier
    allows, for runs of tens of minutes.
    """

    harnesses: int = 6
    runs_max: int = 2
    run_minutes_min: float = 15.0
    run_minutes_max: float = 60.0
    rate_min: float = 1.0
    rate_max: float = 4.0
    cot_share: float = 0.4
    error_rate: float = 0.01


def eval_harness(ctx: SimContext, p: EvalHarness) -> list[Source]:
    return [_harness(ctx, p, i) for i in range(ctx.count(p.harnesses))]


def _harness(ctx: SimContext, p: EvalHarness, index: int) -> Source:
    rng = ctx.rng("eval_harness", index)
    world = ctx.world
    ip = world.v4(rng, world.pick(rng, HOSTING))
    persona = (
        personas.openai_python(rng, asyncio=True)
        if rng.random() < 0.7
        else personas.http_library(rng)
    )
    em = Emitter(ctx, f"eval_harness/h{index:02d}", BENIGN, "eval_harness", new_key(rng), persona)
    rate = rng.uniform(p.rate_min, p.rate_max)
    model = rng.choice((prompts.MODEL_BEST, *prompts.MODELS_CHEAP))
    events: list[tuple[float, str]] = []
    events.append(em.line(0.0, ip, "GET", "/v1/models", None, Outcome(200, 0, 0.08)))
    for _ in range(rng.randint(1, max(1, p.runs_max))):
        length = rng.uniform(p.run_minutes_min, p.run_minutes_max) * 60.0
        t = rng.uniform(0.0, max(1.0, ctx.horizon - length))
        end = min(ctx.horizon, t + length)
        cot = rng.random() < p.cot_share
        subject = rng.choice(_MC_SUBJECTS)
        while t < end:
            text = _gsm_prompt(rng) if cot else _mc_prompt(rng, subject)
            body = prompts.chat_body(
                model,
                [{"role": "user", "content": text}],
                stream=False,
                max_tokens=512 if cot else 4,
                temperature=0.0,
            )
            out = origin(
                rng, len(body), 260.0 if cot else 2.0, 0.4, 512 if cot else 4, p.error_rate
            )
            events.append(em.line(t, ip, "POST", API_PATH, body, out))
            t += rng.uniform(0.5, 1.5) / rate
    yield from _events_in_order(events)


@dataclass
class Researcher:
    """Researchers and students who ask for step-by-step reasoning, in their own language,
    from a university network or home, in a browser or a notebook with the SDK: a few
    sessions of related questions on one or two subjects, with long answers.
    """

    users: int = 60
    sessions_mean: float = 2.0
    questions_median: float = 8.0
    think_median: float = 90.0
    campus_share: float = 0.5
    sdk_share: float = 0.35
    non_english_share: float = 0.45
    error_rate: float = 0.01


def researcher(ctx: SimContext, p: Researcher) -> list[Source]:
    return [_researcher(ctx, p, i) for i in range(ctx.count(p.users))]


def _researcher(ctx: SimContext, p: Researcher, index: int) -> Source:
    rng = ctx.rng("researcher", index)
    world = ctx.world
    if rng.random() < p.non_english_share:
        language = rng.choice(multilingual.LANGUAGES[1:])
    else:
        language = "en"
    country = rng.choice(multilingual.LANGUAGE_COUNTRIES[language])
    if rng.random() < p.campus_share:
        ip_of = fixed(world.v4(rng, world.pick(rng, EDUCATION, country)))
    else:
        ip_of = home_address(ctx, rng, country, False)
    sdk = rng.random() < p.sdk_share
    if sdk:
        persona = personas.openai_python(rng, os_name=rng.choice(("Linux", "MacOS")))
        path, key = API_PATH, new_key(rng)
    else:
        persona = personas.desktop_browser(rng, country)
        path, key = WEB_PATH, new_key(rng, "acct_")
    em = Emitter(ctx, f"researcher/u{index:03d}", BENIGN, "researcher", key, persona)
    subjects = rng.sample(multilingual.SUBJECTS, rng.randint(1, 2))
    events: list[tuple[float, str]] = []
    count = 1 + poisson(rng, p.sessions_mean - 1.0)
    for start in session_starts(ctx, rng, count, country, WORK_DAY):
        t = start
        history: list[dict[str, str]] = []
        for _ in range(max(1, round(lognormal(rng, p.questions_median, 0.6)))):
            if t >= ctx.horizon:
                break
            subject = rng.choice(subjects)
            if rng.random() < 0.6:
                text = multilingual.reasoning_question(rng, language, subject)
            else:
                text = multilingual.question(rng, language, subject)
            messages = [*history[-4:], {"role": "user", "content": text}]
            body = prompts.chat_body(prompts.MODEL_BEST, messages, stream=not sdk)
            out = origin(rng, len(body), 1200.0, 0.6, 8192, p.error_rate)
            ip = ip_of(t)
            events.append(em.line(t, ip, "POST", path, body, out))
            if not sdk:
                history += [
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": prompts.assistant_reply(rng)},
                ]
            t += out.duration + lognormal(rng, p.think_median, 0.9)
    return _events_in_order(events)


_PROMPT_EDITS = ("Be concise.", "Answer in JSON.", "Use bullet points.", "Think step by step.")


@dataclass
class PromptDev:
    """Developers testing a prompt in a loop from a notebook or script: the same system
    prompt and task with small edits, dozens of times in a few minutes, then a pause to
    read the results, from home or the office, with the official SDK.
    """

    developers: int = 30
    loops_mean: float = 3.0
    loop_requests_min: int = 10
    loop_requests_max: int = 60
    office_share: float = 0.5
    error_rate: float = 0.02


def prompt_dev(ctx: SimContext, p: PromptDev) -> list[Source]:
    return [_developer(ctx, p, i) for i in range(ctx.count(p.developers))]


def _developer(ctx: SimContext, p: PromptDev, index: int) -> Source:
    rng = ctx.rng("prompt_dev", index)
    world = ctx.world
    country = pick_country(rng)
    if rng.random() < p.office_share:
        ip_of = fixed(world.v4(rng, world.pick(rng, CORPORATE)))
    else:
        ip_of = home_address(ctx, rng, country, rng.random() < 0.2)
    persona = personas.sdk(rng)
    em = Emitter(ctx, f"prompt_dev/dev{index:03d}", BENIGN, "prompt_dev", new_key(rng), persona)
    template = rng.randrange(len(prompts.APP_TEMPLATES))
    system, _ = prompts.app_prompt(rng, template)
    events: list[tuple[float, str]] = []
    for start in session_starts(ctx, rng, 1 + poisson(rng, p.loops_mean - 1.0), country, WORK_DAY):
        t = start
        _, user = prompts.app_prompt(rng, template)
        for _ in range(
            rng.randint(p.loop_requests_min, max(p.loop_requests_min, p.loop_requests_max))
        ):
            if t >= ctx.horizon:
                break
            if rng.random() < 0.3:
                system = f"{system} {rng.choice(_PROMPT_EDITS)}"[:600]
            body = prompts.chat_body(
                rng.choice(prompts.MODELS_CHEAP),
                [{"role": "system", "content": system}, {"role": "user", "content": user}],
                stream=False,
                temperature=rng.choice((0.0, 0.7, 1.0)),
            )
            out = origin(rng, len(body), 200.0, 0.6, 2048, p.error_rate)
            events.append(em.line(t, ip_of(t), "POST", API_PATH, body, out))
            t += out.duration + rng.uniform(0.2, 4.0)
    return _events_in_order(events)


@dataclass
class MultilingualChat:
    """People chatting with the web app in their own language (Chinese, Japanese, Korean,
    Spanish, Portuguese, French, German, Russian), in genuine browsers from home, some of
    them students asking for step-by-step explanations of homework.
    """

    users: int = 120
    sessions_mean: float = 2.0
    messages_median: float = 5.0
    think_median: float = 50.0
    homework_share: float = 0.35
    error_rate: float = 0.012


def multilingual_chat(ctx: SimContext, p: MultilingualChat) -> list[Source]:
    return [_multilingual_user(ctx, p, i) for i in range(ctx.count(p.users))]


def _multilingual_user(ctx: SimContext, p: MultilingualChat, index: int) -> Source:
    rng = ctx.rng("multilingual_chat", index)
    language = rng.choice(multilingual.LANGUAGES[1:])
    country = rng.choice(multilingual.LANGUAGE_COUNTRIES[language])
    persona = (
        personas.desktop_browser(rng, country)
        if rng.random() < 0.7
        else personas.mobile_client(rng, country)
    )
    em = Emitter(
        ctx,
        f"multilingual_chat/u{index:04d}",
        BENIGN,
        "multilingual_chat",
        new_key(rng, "acct_"),
        persona,
    )
    ip_of = home_address(ctx, rng, country, rng.random() < 0.2)
    homework = rng.random() < p.homework_share
    subjects = rng.sample(multilingual.SUBJECTS, 2)
    events: list[tuple[float, str]] = []
    for start in session_starts(
        ctx, rng, 1 + poisson(rng, p.sessions_mean - 1.0), country, HUMAN_DAY
    ):
        t = start
        ip = ip_of(t)
        events.append(em.line(t, ip, "GET", "/api/conversations", None, Outcome(200, 0, 0.1)))
        t += rng.uniform(2.0, 15.0)
        history: list[dict[str, str]] = []
        for _ in range(max(1, round(lognormal(rng, p.messages_median, 0.7)))):
            if t >= ctx.horizon:
                break
            subject = rng.choice(subjects)
            if homework and rng.random() < 0.6:
                text = multilingual.reasoning_question(rng, language, subject)
            else:
                text = multilingual.question(rng, language, subject)
            body = prompts.chat_body(
                rng.choice(prompts.MODELS_CHEAP),
                [*history[-4:], {"role": "user", "content": text}],
                stream=True,
            )
            out = origin(rng, len(body), 450.0, 0.8, 4096, p.error_rate)
            events.append(em.line(t, ip, "POST", WEB_PATH, body, out))
            history += [
                {"role": "user", "content": text},
                {"role": "assistant", "content": prompts.assistant_reply(rng)},
            ]
            t += (
                out.duration
                + lognormal(rng, p.think_median, 0.9)
                + len(text) * rng.uniform(0.15, 0.4)
            )
    return _events_in_order(events)


__all__ = [
    "EvalHarness",
    "Hydra",
    "MultilingualChat",
    "PromptDev",
    "Researcher",
    "Reseller",
    "TraceCoercion",
    "eval_harness",
    "hydra",
    "multilingual_chat",
    "prompt_dev",
    "researcher",
    "reseller",
    "trace_coercion",
]
