"""Header personas and UA-versus-headers mismatch, on real and forged header sets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from abuseguard.intel.agents import EMPTY_AGENT, Agent, AgentClassifier, ClientClass
from abuseguard.intel.persona import (
    MAX_PERSONA_NAMES,
    MAX_VALUE_CHARS,
    MISMATCH_WEIGHTS,
    VOLATILE_HEADERS,
    mismatch_reasons,
    persona_hash,
    persona_mismatch,
)

CLASSIFIER = AgentClassifier()

CHROME_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
FIREFOX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"
SAFARI_UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15"
)
IPHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)

# Header sets in arrival order, names lower-cased as an ASGI server delivers them.
# Chrome 124, fetch() from https://app.example.com to the API (HTTP/2).
CHROME = {
    "host": "api.example.com",
    "content-length": "120",
    "sec-ch-ua": '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"',
    "sec-ch-ua-mobile": "?0",
    "user-agent": CHROME_UA,
    "content-type": "application/json",
    "sec-ch-ua-platform": '"Windows"',
    "accept": "*/*",
    "origin": "https://app.example.com",
    "sec-fetch-site": "same-site",
    "sec-fetch-mode": "cors",
    "sec-fetch-dest": "empty",
    "referer": "https://app.example.com/",
    "accept-encoding": "gzip, deflate, br, zstd",
    "accept-language": "en-US,en;q=0.9",
    "priority": "u=1, i",
    "cookie": "session=abc",
}
# Firefox 125, same fetch().
FIREFOX = {
    "host": "api.example.com",
    "user-agent": FIREFOX_UA,
    "accept": "*/*",
    "accept-language": "en-US,en;q=0.5",
    "accept-encoding": "gzip, deflate, br, zstd",
    "referer": "https://app.example.com/",
    "content-type": "application/json",
    "content-length": "120",
    "origin": "https://app.example.com",
    "connection": "keep-alive",
    "sec-fetch-dest": "empty",
    "sec-fetch-mode": "cors",
    "sec-fetch-site": "same-site",
    "priority": "u=4",
    "te": "trailers",
}
# Safari 17.4 on macOS, same fetch().
SAFARI = {
    "host": "api.example.com",
    "content-type": "application/json",
    "origin": "https://app.example.com",
    "accept-encoding": "gzip, deflate, br",
    "connection": "keep-alive",
    "sec-fetch-mode": "cors",
    "accept": "*/*",
    "user-agent": SAFARI_UA,
    "referer": "https://app.example.com/",
    "sec-fetch-dest": "empty",
    "content-length": "120",
    "accept-language": "en-GB,en;q=0.9",
    "sec-fetch-site": "same-site",
}
# openai-python 1.40.0 on httpx (sync client), chat.completions.create().
OPENAI_PYTHON = {
    "host": "api.example.com",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "accept": "application/json",
    "content-type": "application/json",
    "user-agent": "OpenAI/Python 1.40.0",
    "x-stainless-lang": "python",
    "x-stainless-package-version": "1.40.0",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "CPython",
    "x-stainless-runtime-version": "3.11.9",
    "authorization": "Bearer sk-test",
    "x-stainless-async": "false",
    "x-stainless-retry-count": "0",
    "x-stainless-read-timeout": "600",
    "content-length": "95",
}
# anthropic-sdk-typescript 0.27.0 on Node 20, messages.create().
ANTHROPIC_JS = {
    "host": "api.example.com",
    "connection": "keep-alive",
    "content-type": "application/json",
    "accept": "application/json",
    "anthropic-version": "2023-06-01",
    "user-agent": "Anthropic/JS 0.27.0",
    "x-stainless-lang": "js",
    "x-stainless-package-version": "0.27.0",
    "x-stainless-os": "MacOS",
    "x-stainless-arch": "arm64",
    "x-stainless-runtime": "node",
    "x-stainless-runtime-version": "v20.12.2",
    "x-stainless-retry-count": "0",
    "x-api-key": "sk-ant-test",
    "accept-language": "*",
    "sec-fetch-mode": "cors",
    "accept-encoding": "gzip, deflate",
    "content-length": "200",
}
# Claude Code, as seen in the wild.
CLAUDE_CODE = {
    "host": "api.example.com",
    "accept": "application/json",
    "anthropic-beta": "claude-code-20250219",
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
    "user-agent": "claude-cli/2.1.170 (external, cli)",
    "x-app": "cli",
    "x-stainless-arch": "arm64",
    "x-stainless-lang": "js",
    "x-stainless-os": "MacOS",
    "x-stainless-package-version": "0.70.0",
    "x-stainless-retry-count": "0",
    "x-stainless-runtime": "node",
    "x-stainless-runtime-version": "v24.3.0",
    "x-stainless-timeout": "600",
    "authorization": "Bearer test",
}
# python-requests wearing a Chrome UA.
FORGED_CHROME = {
    "host": "api.example.com",
    "user-agent": CHROME_UA,
    "accept-encoding": "gzip, deflate",
    "accept": "*/*",
    "connection": "keep-alive",
    "authorization": "Bearer x",
    "content-length": "95",
    "content-type": "application/json",
}
# python-requests wearing the OpenAI SDK's UA.
FORGED_SDK = {
    "host": "api.example.com",
    "user-agent": "OpenAI/Python 1.40.0",
    "accept-encoding": "gzip, deflate",
    "accept": "*/*",
    "connection": "keep-alive",
    "authorization": "Bearer x",
    "content-type": "application/json",
    "content-length": "95",
}


def agent_of(headers: dict[str, str]) -> Agent:
    return CLASSIFIER.classify(headers.get("user-agent"))


def with_(headers: dict[str, str], **changes: str | None) -> dict[str, str]:
    out = dict(headers)
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def noisy_or(*rules: str) -> float:
    return 1.0 - math.prod(1.0 - MISMATCH_WEIGHTS[rule] for rule in rules)


# --- persona_mismatch -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [CHROME, FIREFOX, SAFARI, OPENAI_PYTHON, ANTHROPIC_JS, CLAUDE_CODE]
)
def test_real_header_sets_do_not_mismatch(headers: dict[str, str]) -> None:
    agent = agent_of(headers)
    assert mismatch_reasons(agent, headers) == ()
    assert persona_mismatch(agent, headers) == 0.0


def test_real_iphone_safari_does_not_mismatch() -> None:
    headers = with_(SAFARI, user_agent=IPHONE_UA)
    agent = agent_of(headers)
    assert agent.client_class is ClientClass.MOBILE
    assert persona_mismatch(agent, headers) == 0.0


def test_script_wearing_a_chrome_ua() -> None:
    agent = agent_of(FORGED_CHROME)
    expected = (
        "browser_no_accept_language",
        "chromium_no_fetch_metadata",
        "chromium_no_client_hints",
    )
    assert mismatch_reasons(agent, FORGED_CHROME) == expected
    assert persona_mismatch(agent, FORGED_CHROME) == pytest.approx(noisy_or(*expected))
    assert persona_mismatch(agent, FORGED_CHROME) > 0.75


def test_script_wearing_the_openai_sdk_ua() -> None:
    agent = agent_of(FORGED_SDK)
    assert mismatch_reasons(agent, FORGED_SDK) == ("sdk_no_stainless",)
    assert persona_mismatch(agent, FORGED_SDK) == pytest.approx(0.7)


def test_stainless_language_contradicts_the_ua() -> None:
    headers = with_(OPENAI_PYTHON, x_stainless_lang="js")
    assert mismatch_reasons(agent_of(headers), headers) == ("sdk_stainless_contradiction",)


def test_stainless_package_version_contradicts_the_ua() -> None:
    headers = with_(OPENAI_PYTHON, x_stainless_package_version="2.3.0")
    assert mismatch_reasons(agent_of(headers), headers) == ("sdk_stainless_contradiction",)


def test_anthropic_sdk_without_anthropic_version() -> None:
    headers = with_(ANTHROPIC_JS, anthropic_version=None)
    assert mismatch_reasons(agent_of(headers), headers) == ("anthropic_no_version",)


def test_claude_code_without_stainless_headers() -> None:
    headers = {k: v for k, v in CLAUDE_CODE.items() if not k.startswith("x-stainless-")}
    assert mismatch_reasons(agent_of(headers), headers) == ("sdk_no_stainless",)


def test_claude_code_version_is_not_the_sdk_version() -> None:
    # Claude Code 2.x ships the Anthropic JS SDK 0.70: no contradiction.
    assert persona_mismatch(agent_of(CLAUDE_CODE), CLAUDE_CODE) == 0.0


def test_browser_ua_with_server_side_stainless_headers() -> None:
    headers = with_(CHROME, x_stainless_lang="python", x_stainless_runtime="CPython")
    assert mismatch_reasons(agent_of(headers), headers) == ("browser_with_server_sdk",)


def test_js_sdk_running_in_a_browser_is_consistent() -> None:
    # openai-node in a page (dangerouslyAllowBrowser): browser UA, runtime "browser:chrome"
    headers = with_(
        CHROME,
        x_stainless_lang="js",
        x_stainless_runtime="browser:chrome",
        x_stainless_os="Unknown",
    )
    assert persona_mismatch(agent_of(headers), headers) == 0.0


def test_curl_with_copied_browser_headers() -> None:
    headers = with_(CHROME, user_agent="curl/8.4.0")
    assert mismatch_reasons(agent_of(headers), headers) == ("non_browser_with_fetch_metadata",)


def test_empty_ua_with_fetch_metadata() -> None:
    headers = with_(CHROME, user_agent=None)
    assert mismatch_reasons(EMPTY_AGENT, headers) == ("empty_ua_with_fetch_metadata",)


def test_empty_ua_alone_is_not_a_mismatch() -> None:
    assert persona_mismatch(EMPTY_AGENT, {"host": "x", "accept": "*/*"}) == 0.0


def test_firefox_without_fetch_metadata() -> None:
    headers = {k: v for k, v in FIREFOX.items() if not k.startswith("sec-fetch-")}
    assert mismatch_reasons(agent_of(headers), headers) == ("firefox_no_fetch_metadata",)


def test_safari_without_fetch_metadata() -> None:
    headers = {k: v for k, v in SAFARI.items() if not k.startswith("sec-fetch-")}
    assert mismatch_reasons(agent_of(headers), headers) == ("safari_no_fetch_metadata",)


def test_old_browsers_are_not_expected_to_send_fetch_metadata() -> None:
    old_chrome = CHROME_UA.replace("Chrome/124.0.0.0", "Chrome/70.0.3538.77")
    headers = {
        "host": "x",
        "user-agent": old_chrome,
        "accept": "*/*",
        "accept-encoding": "gzip, deflate, br",
        "accept-language": "en",
    }
    assert persona_mismatch(agent_of(headers), headers) == 0.0


def test_accept_encoding_without_gzip_under_a_browser_ua() -> None:
    headers = with_(CHROME, accept_encoding="identity")
    assert mismatch_reasons(agent_of(headers), headers) == ("browser_accept_encoding_no_gzip",)


def test_browser_missing_every_basic_header() -> None:
    headers = {"user-agent": FIREFOX_UA}
    assert mismatch_reasons(agent_of(headers), headers) == (
        "browser_no_accept_language",
        "browser_no_accept_encoding",
        "browser_no_accept",
        "firefox_no_fetch_metadata",
    )


def test_mobile_app_ua_is_not_held_to_browser_rules() -> None:
    app = "Instagram 309.0.0.40.113 Android (33/13; 420dpi; 1080x2400; samsung; SM-S911B)"
    agent = CLASSIFIER.classify(app)
    assert agent.client_class is ClientClass.MOBILE
    assert persona_mismatch(agent, {"user-agent": app}) == 0.0


@pytest.mark.parametrize(
    "client_class", [ClientClass.HEADLESS, ClientClass.CRAWLER, ClientClass.UNKNOWN]
)
def test_classes_without_rules(client_class: ClientClass) -> None:
    assert persona_mismatch(Agent(client_class, "Chrome", "124"), {}) == 0.0


def test_unparseable_major_is_treated_as_old() -> None:
    agent = Agent(ClientClass.BROWSER, "Chrome", "9" * 50)
    assert "chromium_no_fetch_metadata" not in mismatch_reasons(agent, {})


def test_weights_are_probabilities() -> None:
    assert all(0.0 < weight < 1.0 for weight in MISMATCH_WEIGHTS.values())


HEADER_NAMES = sorted(
    {
        *CHROME,
        *OPENAI_PYTHON,
        *ANTHROPIC_JS,
        "x-stainless-lang",
        "sec-fetch-site",
        "anthropic-version",
        "x-custom",
    }
)
AGENTS = [agent_of(h) for h in (CHROME, FIREFOX, SAFARI, OPENAI_PYTHON, ANTHROPIC_JS, CLAUDE_CODE)]
AGENTS += [EMPTY_AGENT, Agent(ClientClass.SCRIPT, "curl", "8"), Agent(ClientClass.SDK, "x", None)]


@settings(max_examples=300, deadline=None)
@given(
    agent=st.sampled_from(AGENTS),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), st.text(max_size=40), max_size=20),
)
def test_mismatch_is_the_noisy_or_of_its_reasons(agent: Agent, headers: dict[str, str]) -> None:
    score = persona_mismatch(agent, headers)
    assert 0.0 <= score <= 1.0
    assert score == pytest.approx(noisy_or(*mismatch_reasons(agent, headers)))


# --- persona_hash -----------------------------------------------------------------------------


def persona(headers: dict[str, str], agent: Agent | None = None) -> int:
    return persona_hash(list(headers), headers, agent or agent_of(headers))


def test_persona_is_pinned() -> None:
    # blake2b over a documented text: the same in every process and on every machine
    # (Python's hash() is salted per process and would not be).
    assert persona(OPENAI_PYTHON) == 8886088770631753832
    assert persona(CHROME) == 3517655165484794066


def test_persona_range_and_type() -> None:
    for headers in (CHROME, FIREFOX, SAFARI, OPENAI_PYTHON, ANTHROPIC_JS, CLAUDE_CODE):
        value = persona(headers)
        assert type(value) is int
        assert -(2**63) <= value < 2**63 and value != 0


def test_personas_tell_clients_apart() -> None:
    sets = (CHROME, FIREFOX, SAFARI, OPENAI_PYTHON, ANTHROPIC_JS, CLAUDE_CODE, FORGED_SDK)
    assert len({persona(h) for h in sets}) == len(sets)


def test_volatile_headers_do_not_count() -> None:
    base = persona(OPENAI_PYTHON)
    noisy = with_(
        OPENAI_PYTHON,
        authorization="Bearer other-key",
        content_length="99999",
        cookie="a=b",
        x_request_id="abc",
        x_forwarded_for="203.0.113.9",
        traceparent="00-abc-def-01",
        idempotency_key="k1",
    )
    assert persona(noisy) == base
    without = {k: v for k, v in OPENAI_PYTHON.items() if k not in VOLATILE_HEADERS}
    assert persona(without) == base


def test_order_counts() -> None:
    names = list(OPENAI_PYTHON)
    swapped = names[:]
    swapped[1], swapped[3] = swapped[3], swapped[1]  # accept-encoding <-> accept
    agent = agent_of(OPENAI_PYTHON)
    assert persona_hash(swapped, OPENAI_PYTHON, agent) != persona_hash(names, OPENAI_PYTHON, agent)
    # a volatile name moving around changes nothing
    moved = names[:]
    moved.insert(0, moved.pop(names.index("connection")))
    assert persona_hash(moved, OPENAI_PYTHON, agent) == persona_hash(names, OPENAI_PYTHON, agent)


def test_fingerprint_values_count_and_other_values_do_not() -> None:
    base = persona(OPENAI_PYTHON)
    assert persona(with_(OPENAI_PYTHON, x_stainless_package_version="1.41.0")) != base
    assert persona(with_(OPENAI_PYTHON, x_stainless_os="Windows")) != base
    assert persona(with_(OPENAI_PYTHON, x_stainless_retry_count="2")) == base
    assert persona(with_(CHROME, accept_language="de-DE")) == persona(CHROME)
    assert persona(with_(CHROME, referer="https://other.example/")) == persona(CHROME)


def test_ua_family_counts_not_the_full_ua() -> None:
    newer = with_(CHROME, user_agent=CHROME_UA.replace("124.0.0.0", "125.0.0.0"))
    assert agent_of(newer) != agent_of(CHROME)  # the major differs
    assert persona(newer) == persona(CHROME)
    other_class = Agent(ClientClass.HEADLESS, "Chrome", "124")
    assert persona(CHROME, other_class) != persona(CHROME)


def test_only_the_first_names_count() -> None:
    names = [f"x-h{i}" for i in range(MAX_PERSONA_NAMES)]
    agent = EMPTY_AGENT
    assert persona_hash([*names, "x-extra"], {}, agent) == persona_hash(names, {}, agent)
    assert persona_hash(names[:-1], {}, agent) != persona_hash(names, {}, agent)
    huge = [f"x-h{i}" for i in range(100_000)]
    assert persona_hash(huge, {}, agent) == persona_hash(names, {}, agent)


def test_long_fingerprint_values_are_cut() -> None:
    long_a = with_(OPENAI_PYTHON, x_stainless_os="L" * MAX_VALUE_CHARS + "a" * 10_000)
    long_b = with_(OPENAI_PYTHON, x_stainless_os="L" * MAX_VALUE_CHARS + "b")
    assert persona(long_a) == persona(long_b)


def test_empty_header_set() -> None:
    value = persona_hash([], {}, EMPTY_AGENT)
    assert value != 0 and value == persona_hash((), {}, EMPTY_AGENT)


def test_a_name_without_its_value_is_hashed_as_empty() -> None:
    # header_names and headers disagree: a missing value counts as ""
    agent = agent_of(OPENAI_PYTHON)
    names = list(OPENAI_PYTHON)
    gap = with_(OPENAI_PYTHON, x_stainless_os=None)
    assert persona_hash(names, gap, agent) == persona_hash(
        names, with_(OPENAI_PYTHON, x_stainless_os=""), agent
    )


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(st.text(max_size=30), max_size=80),
    values=st.dictionaries(st.sampled_from(HEADER_NAMES), st.text(max_size=300), max_size=10),
    agent=st.sampled_from(AGENTS),
)
def test_any_header_set_hashes(names: list[str], values: dict[str, str], agent: Agent) -> None:
    all_names = names + list(values)
    value = persona_hash(all_names, values, agent)
    assert -(2**63) <= value < 2**63 and value != 0
    assert persona_hash(list(all_names), dict(values), agent) == value


def test_surrogates_and_control_characters_hash() -> None:
    names = ["x-\ud800", "x-\x00", "user-agent"]
    headers = {"x-stainless-os": "\udcff\x00\x01"}
    assert persona_hash([*names, "x-stainless-os"], headers, EMPTY_AGENT) != 0
