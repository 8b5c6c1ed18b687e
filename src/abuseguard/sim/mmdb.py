"""Write the simulated world as small MaxMind-format databases (needs ``mmdb-writer``).

Files, in MaxMind's schemas so any reader (and ``abuseguard.intel``) takes them as is:

* ``GeoLite2-ASN.mmdb``: ``autonomous_system_number``, ``autonomous_system_organization``;
* ``GeoLite2-Country.mmdb``: ``country.iso_code`` (and ``registered_country``);
* ``GeoIP2-Connection-Type.mmdb``: ``Cable/DSL``, ``Cellular`` or ``Corporate``;
* ``GeoIP-Anonymous-Plus.mmdb``: ``is_hosting_provider`` for whole hosting networks, and
  per flagged address ``is_anonymous_vpn`` / ``is_residential_proxy`` /
  ``is_tor_exit_node`` with ``anonymizer_confidence``, ``provider_name`` and
  ``network_last_seen``.

Only addresses the simulation handed out carry per-address flags, so write the files
after simulating (the world fills in while the trace is generated).
"""

from __future__ import annotations

import importlib
import ipaddress
from pathlib import Path
from typing import Any

from abuseguard.sim.world import (
    CORPORATE,
    EDUCATION,
    HOSTING,
    MOBILE,
    RESIDENTIAL,
    TOR,
    VPN,
    World,
)

_CONNECTION = {
    RESIDENTIAL: "Cable/DSL",
    MOBILE: "Cellular",
    EDUCATION: "Corporate",
    CORPORATE: "Corporate",
    HOSTING: "Corporate",
    VPN: "Corporate",
    TOR: "Corporate",
}
_ANON_FIELDS = {
    "vpn": "is_anonymous_vpn",
    "hosting": "is_hosting_provider",
    "public_proxy": "is_public_proxy",
    "residential_proxy": "is_residential_proxy",
    "tor": "is_tor_exit_node",
}
FILES = (
    "GeoLite2-ASN.mmdb",
    "GeoLite2-Country.mmdb",
    "GeoIP2-Connection-Type.mmdb",
    "GeoIP-Anonymous-Plus.mmdb",
)


class MmdbUnavailable(RuntimeError):
    """mmdb-writer is not installed."""


def _writer_module() -> Any:
    try:
        return importlib.import_module("mmdb_writer")
    except ImportError:
        raise MmdbUnavailable(
            "--mmdb-dir needs the mmdb-writer package: pip install 'abuseguard[sim]'"
        ) from None


def write_mmdb(world: World, directory: str | Path) -> list[Path]:
    """Write the world's databases into ``directory``; return the paths written."""
    mw = _writer_module()
    netaddr = importlib.import_module("netaddr")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)

    def new(database_type: str) -> Any:
        return mw.MMDBWriter(
            ip_version=6,
            ipv4_compatible=True,
            database_type=database_type,
            languages=["en"],
            description={"en": f"abuseguard simulated world ({database_type})"},
        )

    asn_db = new("GeoLite2-ASN")
    country_db = new("GeoLite2-Country")
    connection_db = new("GeoIP2-Connection-Type")
    anon_db = new("GeoIP-Anonymous-Plus")
    for net in world.networks:
        prefixes = netaddr.IPSet([*net.v4, *net.v6])
        asn_db.insert_network(
            prefixes,
            {
                "autonomous_system_number": mw.MmdbU32(net.asn),
                "autonomous_system_organization": net.org,
            },
        )
        country = {"iso_code": net.country}
        country_db.insert_network(prefixes, {"country": country, "registered_country": country})
        connection_db.insert_network(prefixes, {"connection_type": _CONNECTION[net.kind]})
        if net.kind == HOSTING:
            anon_db.insert_network(prefixes, {"is_anonymous": True, "is_hosting_provider": True})
    for ip, info in sorted(world.addresses.items()):
        if info.confidence is None and not set(info.anon) - {"hosting"}:
            continue
        record: dict[str, Any] = {"is_anonymous": True}
        for kind in info.anon:
            record[_ANON_FIELDS[kind]] = True
        if info.confidence is not None:
            record["anonymizer_confidence"] = mw.MmdbU16(info.confidence)
        if info.provider:
            record["provider_name"] = info.provider
        if info.last_seen:
            record["network_last_seen"] = info.last_seen
        bits = 32 if ipaddress.ip_address(ip).version == 4 else 128
        anon_db.insert_network(netaddr.IPSet([f"{ip}/{bits}"]), record)
    paths = []
    for name, db in zip(FILES, (asn_db, country_db, connection_db, anon_db), strict=True):
        path = out / name
        db.to_db_file(str(path))
        paths.append(path)
    return paths
