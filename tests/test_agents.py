"""User-Agent classification: uap-core's own cases, the extra matchers, bad input, the cache."""

from __future__ import annotations

import random
import re
import string
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.intel.agents import (
    _BARE_TOKENS,
    _SDK_HEADS,
    _VERSIONED_TOKENS,
    EMPTY_AGENT,
    UNKNOWN_AGENT,
    Agent,
    AgentClassifier,
    ClientClass,
    _ClockCache,
    fast_path,
)

UAP_CASES = Path(__file__).resolve().parents[2] / "shared" / "data" / "uap-core" / "test_ua.yaml"

C = ClientClass


@pytest.fixture(scope="module")
def classifier() -> AgentClassifier:
    return AgentClassifier()


# --- uap-core's test cases ----------------------------------------------------------------
# An oracle independent of the classifier's own tables: it reads the family uap-core
# expects and the UA string, and says which classes are acceptable where the mapping is
# unambiguous. Families it cannot place (apps, mail clients, TVs, monitors ...) are left out
# of the agreement rate and only checked for "never raises, never EMPTY".

ORACLE_BROWSERS = {
    "Chrome", "Chrome Mobile", "Chrome Mobile iOS", "Chrome Mobile WebView", "Chromium",
    "Chrome Frame", "Firefox", "Firefox Mobile", "Firefox iOS", "Firefox Beta",
    "Firefox (Shiretoko)", "Safari", "Mobile Safari", "Mobile Safari UI/WKWebView", "Edge",
    "Edge Mobile", "Opera", "Opera Mobile", "Opera Mini", "Opera GX", "Opera Touch",
    "Opera Neon", "Opera Tablet", "Opera Coast", "IE", "IE Mobile", "IE Large Screen", "Brave",
    "Vivaldi", "Yandex Browser", "Samsung Internet", "UC Browser", "QQ Browser",
    "QQ Browser Mobile", "QQ Browser Mini", "Baidu Browser", "Baidu Explorer", "Maxthon",
    "Amazon Silk", "Puffin", "Whale", "Pale Moon", "Waterfox", "Basilisk", "IceCat",
    "Konqueror", "Midori", "Sleipnir", "Dolphin", "Coc Coc", "360 Secure Browser",
    "Avast Secure Browser", "Aloha Browser", "DuckDuckGo Mobile", "Mint Browser",
    "MiuiBrowser", "HeyTap Browser", "Huawei Browser", "VivoBrowser", "HiBrowser",
    "Honor Browser", "Oculus Browser", "Sailfish Browser", "Tenta Browser", "MullvadBrowser",
    "Ladybird", "qutebrowser", "Iron", "Comodo Dragon", "Seznam prohlížeč", "Mypal Browser",
    "Phoenix Browser", "Nokia Browser", "BlackBerry WebKit", "Android", "Rekonq", "QupZilla",
    "Conkeror",
}  # fmt: skip
# Browsers that show a desktop UA on tablets: either class is right.
ORACLE_EITHER_FORM_FACTOR = {"Puffin"}
ORACLE_MOBILE_UA = re.compile(
    r"Mobile|Android|iPhone|iPad|iPod|Windows Phone|BlackBerry|BB10|Opera Mini|Kindle|Silk"
    r"|Symbian|Series60|J2ME|MIDP|webOS|IEMobile|Nokia|Tizen|KaiOS"
)
ORACLE_CRAWLER_FAMILY = re.compile(
    r"(?i)bot|spider|crawl|slurp|scrap|archiv|heritrix|nutch|holmes|ichiro|larbin|voyager"
    r"|yeti|findlinks|htdig|scooter|mozdex|envolk|wminer|sproose|altavista|lycos|zao|yowedo"
    r"|simpy|llaut|kraken|grub|checklinks|xenu|web-sniffer|whatweb|pagepeeker|thumbshots"
    r"|webthumb|zooshot|ia_archiver|linkaider|sgbot"
)
ORACLE_HEADLESS = {"HeadlessChrome", "PhantomJS", "Camoufox"}
ORACLE_PROGRAMMATIC = {
    "Python Requests", "Python-urllib", "Python aiohttp", "PyAMF", "PycURL", "curl",
    "libcurl-agent", "Wget", "wget2", "okhttp", "axios", "got", "Go-http-client", "go-resty",
    "Java", "Apache-HttpClient", "Jersey", "AHC", "Google-HTTP-Java-Client",
    "Vert.x-WebClient", "Apache-CXF", "ReactorNetty", "unirest-java", "akka-http",
    "scalaj-http", "HTTPClient", "libwww-perl", "GuzzleHttp", "http.rb", "reqwest", "ureq",
    "lua-resty-http", "Node-oauth", "PostmanRuntime", "HTTPie", "urlgrabber", "Axel",
    "aria2", "lftp", "rclone", "s3fs", "S3Gof3r", "JetS3t", "Boto", "Boto3", "aws-cli",
    "rusoto", "ibm-cos-sdk-java", "minio-go", "Java-EurekaClient",
}  # fmt: skip

# The disagreements with the oracle, each explained. They are asserted as they are, so a
# change in behaviour shows up here rather than as a drift of the rate.
KNOWN_DISAGREEMENTS: dict[str, tuple[ClientClass, str]] = {
    # uap-core names the browser engine, but its own device rules call this Google's page
    # preview bot a Spider, and so do we.
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko; Google Web "
    "Preview) Chrome/27.0 .1453 Safari/537.36.": (C.CRAWLER, "Google Web Preview"),
    # A thumbnail service with a plain Gecko UA: uap-core's device rules do not flag it
    # and its name has no bot/spider/crawl marker, so it looks like a browser.
    "Mozilla/5.0 (X11; U; Linux i686 (x86_64); en-US; rv:1.9.0.17) Gecko WebThumb/1.0": (
        C.BROWSER,
        "WebThumb",
    ),
}


def oracle(family: str, ua: str) -> tuple[str, set[ClientClass]] | None:
    if family in ORACLE_HEADLESS:
        return "headless", {C.HEADLESS}
    if family in ORACLE_PROGRAMMATIC or family.startswith("aws-sdk-"):
        return "programmatic", {C.SDK, C.SCRIPT}
    if family in ORACLE_EITHER_FORM_FACTOR:
        return "browser", {C.BROWSER, C.MOBILE}
    if family in ORACLE_BROWSERS:
        if "Mobile" in family or ORACLE_MOBILE_UA.search(ua):
            return "mobile", {C.MOBILE}
        return "browser", {C.BROWSER}
    if ORACLE_CRAWLER_FAMILY.search(family):
        return "crawler", {C.CRAWLER}
    return None


@pytest.fixture(scope="module")
def uap_cases() -> list[dict[str, Any]]:
    if not UAP_CASES.exists():
        pytest.skip(f"uap-core test cases not found at {UAP_CASES}")
    yaml = pytest.importorskip("yaml")
    with UAP_CASES.open(encoding="utf-8") as handle:
        cases: list[dict[str, Any]] = yaml.safe_load(handle)["test_cases"]
    return cases


def test_uap_core_cases_agree_with_the_oracle(
    classifier: AgentClassifier, uap_cases: list[dict[str, Any]]
) -> None:
    totals: Counter[str] = Counter()
    agreed: Counter[str] = Counter()
    unexpected = []
    for case in uap_cases:
        ua, family = case["user_agent_string"], case["family"]
        verdict = oracle(family, ua)
        if verdict is None:
            continue
        group, allowed = verdict
        agent = classifier.classify(ua)
        totals[group] += 1
        if agent.client_class in allowed:
            agreed[group] += 1
        elif ua not in KNOWN_DISAGREEMENTS:
            unexpected.append((group, agent, ua))
    rate = sum(agreed.values()) / sum(totals.values())
    # 1038 unambiguous cases of 1601; 1036 agree (99.8%), the 2 others are listed above.
    assert sum(totals.values()) > 1000
    assert rate >= 0.99, (rate, unexpected[:20])
    assert unexpected == []
    for group in totals:
        assert agreed[group] / totals[group] >= 0.97, group


@pytest.mark.parametrize("ua", sorted(KNOWN_DISAGREEMENTS))
def test_known_disagreements_are_as_documented(classifier: AgentClassifier, ua: str) -> None:
    expected_class, _why = KNOWN_DISAGREEMENTS[ua]
    assert classifier.classify(ua).client_class is expected_class


def test_uap_core_cases_outside_the_oracle_are_never_empty(
    classifier: AgentClassifier, uap_cases: list[dict[str, Any]]
) -> None:
    outside = [
        case for case in uap_cases if oracle(case["family"], case["user_agent_string"]) is None
    ]
    assert len(outside) > 400
    classes = Counter(
        classifier.classify(case["user_agent_string"]).client_class for case in outside
    )
    assert classes[C.EMPTY] == 0
    # apps and tools: mostly mobile apps, unknown desktop programs, some crawlers
    assert classes[C.MOBILE] > 0 and classes[C.UNKNOWN] > 0


def test_uap_core_family_is_kept(
    classifier: AgentClassifier, uap_cases: list[dict[str, Any]]
) -> None:
    # The extra matchers and the fast path only name clients uap-core does not know, or
    # name them as uap-core does: every expected family is kept.
    renamed = [
        (case["family"], classifier.classify(case["user_agent_string"]).family)
        for case in uap_cases
        if classifier.classify(case["user_agent_string"]).family != case["family"]
    ]
    assert renamed == []


# --- the extra matchers -------------------------------------------------------------------

EXTRA_CASES = [
    ("OpenAI/Python 1.40.0", C.SDK, "OpenAI Python SDK", "1"),
    ("AsyncOpenAI/Python 1.52.2", C.SDK, "OpenAI Python SDK", "1"),
    ("AzureOpenAI/Python 1.40.0", C.SDK, "OpenAI Python SDK", "1"),
    ("OpenAI/JS 4.52.0", C.SDK, "OpenAI JS SDK", "4"),
    ("Anthropic/Python 0.34.0", C.SDK, "Anthropic Python SDK", "0"),
    ("AsyncAnthropic/Python 0.34.0", C.SDK, "Anthropic Python SDK", "0"),
    ("Anthropic/JS 0.27.0", C.SDK, "Anthropic JS SDK", "0"),
    ("anthropic-python/0.2.8", C.SDK, "Anthropic Python SDK (legacy)", "0"),
    ("claude-cli/2.1.170 (external, cli)", C.SDK, "Claude Code", "2"),
    ("google-genai-sdk/1.2.0 gl-python/3.11.4", C.SDK, "Google GenAI SDK", "1"),
    ("GeminiCLI/0.34.0/gemini-2.5-pro (darwin; arm64; terminal)", C.SDK, "Gemini CLI", "0"),
    ("speakeasy-sdk/python 1.2.6 2.486.1 0.0.2 mistralai", C.SDK, "Mistral SDK", "1"),
    ("mistral-client-python/0.4.2", C.SDK, "Mistral SDK", "0"),
    ("langchain/0.1.0", C.SDK, "LangChain", "0"),
    ("ai-sdk/provider-utils/3.0.1 runtime/node.js/22", C.SDK, "Vercel AI SDK", None),
    ("langchain-openai/0.1 OpenAI/Python 1.3.0", C.SDK, "OpenAI Python SDK", "1"),
    ("python-httpx/0.27.0", C.SCRIPT, "python-httpx", "0"),
    ("MyTool/1.0 python-httpx/0.27.0", C.SCRIPT, "python-httpx", "0"),
    ("python-requests/2.31.0", C.SCRIPT, "Python Requests", "2"),
    ("Python/3.11 aiohttp/3.9.1", C.SCRIPT, "Python aiohttp", "3"),
    ("python-urllib3/2.0.7", C.SCRIPT, "urllib3", "2"),
    ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", C.SCRIPT, "node-fetch", "1"),
    ("node-fetch", C.SCRIPT, "node-fetch", None),
    ("undici", C.SCRIPT, "undici", None),
    ("node", C.SCRIPT, "Node.js fetch", None),
    ("axios/1.6.2", C.SCRIPT, "axios", "1"),
    ("Go-http-client/1.1", C.SCRIPT, "Go-http-client", "1"),
    ("Go-http-client/2.0", C.SCRIPT, "Go-http-client", "2"),
    ("curl/8.4.0", C.SCRIPT, "curl", "8"),
    ("Wget/1.21.4", C.SCRIPT, "Wget", "1"),
    ("okhttp/4.12.0", C.SCRIPT, "okhttp", "4"),
    ("Java-http-client/17.0.2", C.SCRIPT, "Java-http-client", "17"),
    ("Deno/1.38.0", C.SCRIPT, "Deno", "1"),
    ("Bun/1.0.0", C.SCRIPT, "Bun", "1"),
    ("PostmanRuntime/7.36.0", C.SCRIPT, "PostmanRuntime", "7"),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessChrome/120.0.6099.28 Safari/537.36",
        C.HEADLESS,
        "HeadlessChrome",
        "120",
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "HeadlessEdg/120.0.0.0 Safari/537.36",
        C.HEADLESS,
        "HeadlessEdge",
        "120",
    ),
    (
        "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko); compatible; ChatGPT-User/1.0; "
        "+https://openai.com/bot",
        C.CRAWLER,
        "AI crawler",
        None,
    ),
    (
        "Mozilla/5.0 (Linux; Android 5.0) AppleWebKit/537.36 (KHTML, like Gecko) Mobile "
        "Safari/537.36 (compatible; Bytespider; spider-feedback@bytedance.com)",
        C.CRAWLER,
        "AI crawler",
        None,
    ),
    ("Mozilla/5.0 (compatible; GPTBot/1.0; +https://openai.com/gptbot)", C.CRAWLER, "GPTBot", "1"),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36",
        C.BROWSER,
        "Chrome",
        "124",
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Mobile Safari/537.36",
        C.MOBILE,
        "Chrome Mobile",
        "124",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        C.MOBILE,
        "Mobile Safari",
        "17",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.4 Safari/605.1.15",
        C.BROWSER,
        "Safari",
        "17",
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
        C.BROWSER,
        "Firefox",
        "125",
    ),
]


@pytest.mark.parametrize(("ua", "client_class", "family", "major"), EXTRA_CASES)
def test_extra_matchers(
    classifier: AgentClassifier, ua: str, client_class: ClientClass, family: str, major: str | None
) -> None:
    assert classifier.classify(ua) == Agent(client_class, family, major)
    # the parser alone (no fast path, no cache) says the same
    assert classifier.parse(ua) == Agent(client_class, family, major)


def fast_path_samples() -> list[str]:
    samples = []
    for token in _VERSIONED_TOKENS:
        samples += [f"{token}/1.2.3", f"{token}/12 (x; y) other/1", f"{token}/x1", f"{token} /1"]
    for token in _BARE_TOKENS:
        samples += [token, f"{token} ", f"{token}/1.0", f"{token}x"]
    for head in _SDK_HEADS:
        samples += [f"{head} 1.40.0", f"{head} x", head, f"{head}  1"]
    return samples


def test_fast_path_agrees_with_the_parser(classifier: AgentClassifier) -> None:
    hits = 0
    for ua in fast_path_samples():
        fast = fast_path(ua)
        if fast is not None:
            hits += 1
            assert fast == classifier.parse(ua), ua
    assert hits > len(_VERSIONED_TOKENS) + len(_BARE_TOKENS) + len(_SDK_HEADS)


PRODUCT_TOKENS = sorted({*_VERSIONED_TOKENS, *_BARE_TOKENS, *_SDK_HEADS})


@settings(max_examples=300, deadline=None)
@given(
    token=st.sampled_from(PRODUCT_TOKENS),
    glue=st.sampled_from(["", "/", " ", "/1", " 1", "/١٢", "/²", "\t"]),
    tail=st.text(alphabet=string.printable, max_size=30),
)
def test_fast_path_never_contradicts_the_parser(token: str, glue: str, tail: str) -> None:
    ua = token + glue + tail
    fast = fast_path(ua)
    if fast is not None:
        assert fast == _SHARED.parse(ua)


_SHARED = AgentClassifier(cache_size=16)


# --- empty and bad input --------------------------------------------------------------------


@pytest.mark.parametrize("ua", [None, "", " ", "   \t  "])
def test_empty(classifier: AgentClassifier, ua: str | None) -> None:
    assert classifier.classify(ua) is EMPTY_AGENT


def test_too_long_is_cut_to_max_length() -> None:
    classifier = AgentClassifier(max_length=64)
    ua = "curl/8.4.0 " + "x" * 1_000_000
    assert classifier.classify(ua) == Agent(C.SCRIPT, "curl", "8")
    assert classifier.cached == 1
    # the cut string is the key: every UA sharing the first 64 characters is one entry
    sharing_the_prefix = "curl/8.4.0 " + "x" * 53 + "something else"
    assert classifier.classify(sharing_the_prefix) is classifier.classify(ua)
    assert classifier.cached == 1


def test_token_cut_by_max_length() -> None:
    # "Mozilla/5.0 (iPhone" cut to "Mozilla/5." no longer names anything
    classifier = AgentClassifier(max_length=10)
    assert classifier.classify("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4)").client_class is C.UNKNOWN


@pytest.mark.parametrize(
    "ua",
    [
        "curl/8.4.0\x00",
        "\x00",
        "Mozilla/5.0\r\nX-Injected: 1",
        "\x1b[31mred",
        "ab\x7fcd",
        "\x85",
        " \n ",
    ],
)
def test_control_characters_are_unknown_and_not_cached(ua: str) -> None:
    classifier = AgentClassifier(cache_size=8)
    assert classifier.classify(ua) is UNKNOWN_AGENT
    assert classifier.cached == 0


def test_horizontal_tab_is_allowed(classifier: AgentClassifier) -> None:
    assert classifier.classify("curl/8.4.0\t(linux)") == Agent(C.SCRIPT, "curl", "8")


def test_latin1_text_is_parsed(classifier: AgentClassifier) -> None:
    agent = classifier.classify(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Gecko/20100101 Firefox/125.0 \xe9\xff"
    )
    assert agent.client_class is C.BROWSER and agent.family == "Firefox"


def test_lone_surrogates_are_unknown(classifier: AgentClassifier) -> None:
    assert classifier.classify("Mozilla/5.0 \ud800") is UNKNOWN_AGENT
    # the parser itself refuses them (the Rust backend needs UTF-8); parse() absorbs that
    assert classifier.parse("Mozilla/5.0 \ud800").client_class is C.UNKNOWN


def test_bytes_are_decoded_as_latin1(classifier: AgentClassifier) -> None:
    assert classifier.classify(b"curl/8.4.0") == Agent(C.SCRIPT, "curl", "8")  # type: ignore[arg-type]
    assert classifier.classify(bytearray(b"\xff\xfe")).client_class is C.UNKNOWN  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [42, 4.2, ["curl/8"], {"a": 1}, object()])
def test_non_strings_are_unknown(classifier: AgentClassifier, value: object) -> None:
    assert classifier.classify(value) is UNKNOWN_AGENT  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=700))
def test_any_text_classifies_without_raising(ua: str) -> None:
    agent = _SHARED.classify(ua)
    assert isinstance(agent, Agent)
    assert isinstance(agent.client_class, ClientClass)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_any_header_bytes_classify_without_raising(raw: bytes) -> None:
    assert isinstance(_SHARED.classify(raw.decode("latin-1")), Agent)


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cache_size": 0}, "cache_size"),
        ({"cache_size": -5}, "cache_size"),
        ({"cache_size": 1.5}, "cache_size"),
        ({"max_length": 0}, "max_length"),
        ({"max_length": "512"}, "max_length"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        AgentClassifier(**kwargs)


def test_uses_the_rust_backend_when_installed(classifier: AgentClassifier) -> None:
    pytest.importorskip("ua_parser_rs")
    assert classifier.backend == "ua_parser.regex"


# --- the cache ------------------------------------------------------------------------------


def random_uas(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + " /;()."
    return [
        f"Mozilla/5.0 ({''.join(rng.choice(alphabet) for _ in range(rng.randint(5, 60)))}) {i}"
        for i in range(count)
    ]


def test_cache_hits_return_the_same_object(classifier: AgentClassifier) -> None:
    ua = "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0"
    assert classifier.classify(ua) is classifier.classify(ua)


def test_cache_is_bounded_under_a_flood() -> None:
    classifier = AgentClassifier(cache_size=64)
    for ua in random_uas(2_000, seed=1):
        classifier.classify(ua)
    assert classifier.cached == 64


def test_popular_user_agent_survives_a_flood() -> None:
    classifier = AgentClassifier(cache_size=64)
    popular = EXTRA_CASES[-1][0]
    first = classifier.classify(popular)
    for i, ua in enumerate(random_uas(2_000, seed=2)):
        classifier.classify(ua)
        if i % 32 == 0:  # seen at least once per sweep of the clock hand
            assert classifier.classify(popular) is first


def test_concurrent_classification_is_consistent() -> None:
    shared = AgentClassifier(cache_size=32)
    reference = AgentClassifier(cache_size=4096)
    uas = random_uas(200, seed=3) + [case[0] for case in EXTRA_CASES]
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(600):
            ua = rng.choice(uas)
            if shared.classify(ua) != reference.classify(ua):
                errors.append(ua)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert shared.cached <= 32


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.integers(min_value=1, max_value=8),
    ops=st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=20)), max_size=200),
)
def test_clock_cache_against_a_model(capacity: int, ops: list[tuple[bool, int]]) -> None:
    """Never more than capacity entries, a hit returns what was stored for that very key,
    and the index and the slots stay in step."""
    cache = _ClockCache(capacity)
    stored: dict[str, Agent] = {}
    for is_put, number in ops:
        key = f"ua{number}"
        if is_put:
            agent = stored.get(key) or Agent(C.UNKNOWN, key, str(number))
            cache.put(key, agent)
            stored.setdefault(key, agent)
        else:
            found = cache.get(key)
            if found is not None:
                assert found is stored[key]
        assert len(cache) <= capacity
        assert len(cache._keys) <= capacity
        assert set(cache._index) == set(cache._keys)
        for slot, k in enumerate(cache._keys):
            assert cache._index[k][0] == slot


def test_clock_cache_gives_a_second_chance() -> None:
    cache = _ClockCache(3)
    agents = {key: Agent(C.UNKNOWN, key, None) for key in "abcd"}
    for key in "abc":
        cache.put(key, agents[key])
    assert cache.get("a") is agents["a"]  # referenced: survives the next eviction
    cache.put("d", agents["d"])
    assert cache.get("a") is agents["a"]
    assert cache.get("b") is None  # the first unreferenced entry went
    assert cache.get("c") is agents["c"] and cache.get("d") is agents["d"]
