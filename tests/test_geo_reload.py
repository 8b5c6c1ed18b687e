"""GeoIP reload: no stale answers after a database is replaced, no crash when it is
overwritten in place (issue 13, item 10)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from abuseguard import AbuseGuard, NetworkPolicy, Policy
from abuseguard.identity import ClientAddress
from abuseguard.intel import geo as geo_module
from abuseguard.intel.geo import GeoIntel, IntelError
from abuseguard.intel.network import NetworkView
from abuseguard.testing import serve

try:
    from tests import mmdb_fixtures as fx
except ImportError:  # run from inside tests/
    import mmdb_fixtures as fx  # type: ignore[no-redef]

TESTS_DIR = Path(__file__).resolve().parent
SRC_DIR = TESTS_DIR.parent / "src"
CLIENT = "81.2.69.160"
RELOAD_INTERVAL = 30.0


class ManualClock:
    """Stands in for `time.monotonic` inside the intel module: moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    manual = ManualClock()
    monkeypatch.setattr(geo_module, "monotonic", manual)
    return manual


def write_city_atomically(path: Path, country: str) -> None:
    """A new City file at `path` by write-then-rename, as geoipupdate does."""
    fresh = path.with_name(f"fresh-{path.name}")
    fx.write_city(fresh, {"81.2.69.0/24": (country, "Somewhere")})
    os.replace(fresh, path)


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


@pytest.fixture
def city_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "city.mmdb"
    fx.write_city(path, {"81.2.69.0/24": ("GB", "London")})
    yield path


def test_replaced_city_database_unblocks_address_over_http(
    city_file: Path, clock: ManualClock
) -> None:
    intel = GeoIntel(city=city_file, reload_interval=RELOAD_INTERVAL)
    policy = Policy(
        network=NetworkPolicy(deny_countries=("GB",)),
        scoring=None,
        trusted_proxies=["127.0.0.0/8"],
    )
    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(AbuseGuard, policy=policy, intel=intel)
    headers = {"x-forwarded-for": CLIENT}
    with serve(app, timeout=90.0) as url, httpx.Client(base_url=url) as client:
        assert client.get("/", headers=headers).status_code == 403
        assert client.get("/", headers=headers).status_code == 403
        write_city_atomically(city_file, "FR")
        # Within the interval the file is not looked at: the old answer stands.
        clock.now += RELOAD_INTERVAL / 2
        assert client.get("/", headers=headers).status_code == 403
        clock.now += RELOAD_INTERVAL
        response = client.get("/", headers=headers)
        assert (response.status_code, response.text) == (200, "hello")
        assert client.get("/", headers={"x-forwarded-for": "81.2.69.161"}).status_code == 200


def test_reload_check_runs_on_a_cached_profile(city_file: Path, clock: ManualClock) -> None:
    intel = GeoIntel(city=city_file, reload_interval=RELOAD_INTERVAL)
    view = NetworkView(NetworkPolicy(deny_countries=("GB",)), intel)
    address = ClientAddress(CLIENT, CLIENT, "81.2.69.0/24", 4, False)
    first = view.profile(address)
    assert (first.facts.country, first.rule_reason) == ("GB", "geo")
    assert view.profile(address) is first  # cached: the intel is not asked again
    write_city_atomically(city_file, "FR")
    clock.now += RELOAD_INTERVAL + 1
    after = view.profile(address)
    assert (after.facts.country, after.rule_action, after.rule_reason) == ("FR", None, None)
    assert intel.lookup(CLIENT).country == "FR"
    # The new answer is cached again until the next change.
    assert view.profile(address) is after
    intel.close()


def test_profile_cache_follows_a_manual_reload(city_file: Path) -> None:
    intel = GeoIntel(city=city_file, reload_interval=3600)
    view = NetworkView(NetworkPolicy(deny_countries=("GB",)), intel)
    address = ClientAddress(CLIENT, CLIENT, "81.2.69.0/24", 4, False)
    assert view.profile(address).rule_reason == "geo"
    write_city_atomically(city_file, "FR")
    assert view.profile(address).rule_reason == "geo"  # not checked before the interval
    assert intel.reload_if_changed() is True
    assert view.profile(address).facts.country == "FR"
    intel.close()


def test_profile_cache_follows_the_date(tmp_path: Path) -> None:
    # Anonymizer strength decays with the age of the claim: a new day is a new answer.
    path = fx.write_anonymous_plus(
        tmp_path / "plus.mmdb",
        {"45.83.221.0/24": fx.AnonRow(("vpn",), confidence=100, seen_days_ago=0)},
        today=fx.FIXTURE_TODAY,
    )
    day = [fx.FIXTURE_TODAY]
    intel = GeoIntel(anonymous_plus=path, today=lambda: day[0], reload_interval=0)
    view = NetworkView(NetworkPolicy(), intel)
    address = ClientAddress(fx.VPN, fx.VPN, "45.83.221.0/24", 4, False)
    assert view.profile(address).facts.anon_strength == pytest.approx(1.0)
    day[0] = fx.FIXTURE_TODAY.replace(month=fx.FIXTURE_TODAY.month + 1)
    assert view.profile(address).facts.anon_strength < 0.6
    intel.close()


# ---------------------------------------------------------------- in-place overwrite

# Runs in a child process, so that a SIGBUS shows as a negative return code instead of
# killing the test session. The City file is big enough to span many pages; its answers
# come from its whole length, so a half-truncated mapped file would fault.
_OVERWRITE_CHILD = textwrap.dedent(
    """
    import sys
    import threading
    from pathlib import Path

    import mmdb_fixtures as fx
    from abuseguard.intel.geo import GeoIntel

    path = Path(sys.argv[1])
    mode = sys.argv[2:] and sys.argv[2] or None
    count = 2000
    addresses = [f"20.{i // 256}.{i % 256}.7" for i in range(count)]

    def city_rows(country):
        return {
            f"20.{i // 256}.{i % 256}.0/24": (country, f"City number {i}") for i in range(count)
        }

    def countries(geo):
        return "".join(sorted({str(geo.lookup(address).country) for address in addresses}))

    fx.write_city(path, city_rows("GB"))
    french = fx.write_city(path.with_name("fr.mmdb"), city_rows("FR")).read_bytes()
    british = path.read_bytes()
    assert len(french) == len(british)
    options = {} if mode is None else {"open_mode": mode}
    with GeoIntel(city=path, reload_interval=0, cache_size=0, **options) as geo:
        print("start", countries(geo), flush=True)
        with open(path, "r+b") as file:  # overwrite in place, different content
            file.write(french)
            file.truncate(len(french))
        print("rewritten", countries(geo), flush=True)
        with open(path, "r+b") as file:
            file.truncate(len(french) // 2)
        print("halved", countries(geo), flush=True)
        with open(path, "r+b") as file:
            file.truncate(0)
            file.write(british)
        print("restored", countries(geo), flush=True)
        # Again while another thread keeps looking up, with the file changing under it.
        stop = threading.Event()
        served = []

        def serve_lookups():
            while not stop.is_set():
                served.append(countries(geo))

        worker = threading.Thread(target=serve_lookups)
        worker.start()
        for content in (french, british) * 5:
            with open(path, "r+b") as file:
                file.truncate(len(content) // 2)
                file.truncate(0)
                file.write(content)
        stop.set()
        worker.join()
        assert served and set(served) <= {"FR", "GB", "FRGB"}
        print("concurrent", countries(geo), flush=True)
    """
)


def _run_overwrite_child(tmp_path: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "overwrite_child.py"
    script.write_text(_OVERWRITE_CHILD, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), str(TESTS_DIR)])
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "city.mmdb"), *mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_overwrite_in_place_does_not_crash(tmp_path: Path) -> None:
    result = _run_overwrite_child(tmp_path)
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    assert result.stdout.splitlines() == [
        "start GB",
        "rewritten FR",
        # The half file is refused (its metadata is gone): the last good copy serves.
        "halved FR",
        "restored GB",
        "concurrent GB",
    ]
    assert "still serving the copy loaded before" in result.stderr


def test_open_modes(city_file: Path) -> None:
    for mode in ("copy", "mmap"):
        with GeoIntel(city=city_file, open_mode=mode) as intel:
            assert intel.lookup(CLIENT).country == "GB"
            assert {db.open_mode for db in intel.database_info()} == {mode}
    with pytest.raises(IntelError, match="open_mode"):
        GeoIntel(city=city_file, open_mode="memory-ish")


def test_copy_mode_survives_a_deleted_file(city_file: Path, tmp_path: Path) -> None:
    with GeoIntel(city=city_file, reload_interval=0) as intel:
        assert intel.lookup(CLIENT).country == "GB"
        city_file.unlink()
        assert intel.lookup("81.2.69.161").country == "GB"


def test_copy_mode_without_memfd_leaves_no_temporary_file(
    city_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copies = tmp_path / "copies"
    copies.mkdir()
    monkeypatch.delattr(os, "memfd_create", raising=False)
    monkeypatch.setattr("tempfile.tempdir", str(copies))
    with GeoIntel(city=city_file, reload_interval=0) as intel:
        assert list(copies.iterdir()) == []
        with open(city_file, "r+b") as file:
            file.truncate(file.seek(0, os.SEEK_END) // 2)
        assert intel.lookup(CLIENT).country == "GB"
        write_city_atomically(city_file, "FR")
        assert intel.lookup(CLIENT).country == "FR"
        assert list(copies.iterdir()) == []


def test_invalid_file_error_names_the_file_not_the_copy(tmp_path: Path) -> None:
    garbage = fx.write_garbage(tmp_path / "garbage.mmdb")
    with pytest.raises(IntelError) as raised:
        GeoIntel(city=garbage)
    message = str(raised.value)
    assert "not a valid MaxMind DB" in message and "/proc/self/fd" not in message
    assert message.count(str(garbage)) == 2, message
