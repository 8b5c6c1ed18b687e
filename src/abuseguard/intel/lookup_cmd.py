"""`abuseguard lookup IP [--db PATH ...] [--format json|text]`: print the enrichment record.

The kind of each database is read from its metadata, so users just pass paths. Errors
(missing or corrupt file, unsupported type, two files of one kind, an address that is not
an IP) print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from abuseguard.intel.geo import GeoIntel
from abuseguard.intel.mmdb import Database, IntelError
from abuseguard.intel.records import NetworkFacts

EXIT_USAGE = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lookup",
        help="print what the MaxMind databases say about an address",
        description=(
            "Look up addresses in MaxMind databases (ASN, ISP, Country, City, Anonymous IP, "
            "Anonymous Plus, Residential Proxy, IP Risk, Connection Type) and print the "
            "record the guard would use. The kind of each --db file is read from its "
            "metadata."
        ),
    )
    parser.add_argument("ips", nargs="+", metavar="IP", help="address(es) to look up")
    parser.add_argument(
        "--db",
        action="append",
        default=[],
        metavar="PATH",
        help="a MaxMind .mmdb file (repeat for several)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        intel = _open(args.db)
    except IntelError as exc:
        return _fail(str(exc))
    with intel:
        results = [(ip, intel.lookup(ip)) for ip in args.ips]
        bad = [ip for ip, facts in results if not facts.valid]
        if bad:
            return _fail(f"not an IP address: {bad[0]!r}")
        for ip, facts in results:
            record = _record(ip, facts, intel.databases)
            if args.format == "json":
                print(json.dumps(record, ensure_ascii=False))
            else:
                print(_as_text(record))
    return 0


def _open(paths: list[str]) -> GeoIntel:
    databases: list[Database] = []
    try:
        for path in paths:
            databases.append(Database.open(path))
        return GeoIntel.from_databases(databases, cache_size=0)
    except IntelError:
        for database in databases:
            database.close()
        raise


def _record(ip: str, facts: NetworkFacts, databases: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = {"ip": ip}
    record.update(dataclasses.asdict(facts))
    record["anon"] = list(facts.anon)
    record["databases"] = databases
    return record


def _as_text(record: dict[str, Any]) -> str:
    lines = []
    for key, value in record.items():
        if key == "databases":
            continue
        if isinstance(value, bool):
            shown = "yes" if value else "no"
        elif isinstance(value, list):
            shown = ", ".join(value) if value else "-"
        elif isinstance(value, float):
            shown = f"{value:.4g}"
        elif value is None:
            shown = "-"
        else:
            shown = str(value)
        lines.append(f"{key + ':':<22}{shown}")
    for kind, path in record["databases"].items():
        lines.append(f"{'db ' + kind + ':':<22}{path}")
    return "\n".join(lines) + "\n"


def _fail(message: str) -> int:
    print(f"abuseguard lookup: error: {message}", file=sys.stderr)
    return EXIT_USAGE
