"""`abuseguard lookup IP... [--mmdb-dir DIR] [--db PATH ...] [--format json|text]`.

Prints the enrichment record of each address. The kind of each database is read from its
metadata, so users just pass a folder (``--mmdb-dir``, as ``simulate`` and ``replay``) or
paths. Database errors (none given, missing or corrupt file, unsupported type, two files
of one kind) print one line to stderr and exit 2. An address that is not an IP is
reported on stderr and the others are still printed; the exit status is then 2 too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
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
        "--mmdb-dir",
        metavar="DIR",
        help="a folder of MaxMind .mmdb files (every file in it is used)",
    )
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
    paths = list(args.db)
    if args.mmdb_dir:
        folder = Path(args.mmdb_dir)
        if not folder.is_dir():
            return _fail(f"--mmdb-dir: not a directory: {folder}")
        found = sorted(str(path) for path in folder.glob("*.mmdb"))
        if not found:
            return _fail(f"--mmdb-dir: no MaxMind databases (*.mmdb) in {folder}")
        paths.extend(found)
    if not paths:
        return _fail(
            "no database to look in: pass --mmdb-dir DIR (a folder of .mmdb files) "
            "or --db PATH (repeatable), e.g. GeoLite2-ASN.mmdb"
        )
    try:
        intel = _open(paths)
    except IntelError as exc:
        return _fail(str(exc))
    status = 0
    with intel:
        for ip in args.ips:
            facts = intel.lookup(ip)
            if not facts.valid:
                print(f"abuseguard lookup: error: not an IP address: {ip!r}", file=sys.stderr)
                status = EXIT_USAGE
                continue
            record = _record(ip, facts, intel.databases)
            if args.format == "json":
                print(json.dumps(record, ensure_ascii=False))
            else:
                print(_as_text(record))
    return status


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
    for name, value in dataclasses.asdict(facts).items():
        # The anonymizer kinds by name, where the internal bitmask would be.
        if name == "anon_flags":
            record["anon"] = list(facts.anon)
        else:
            record[name] = value
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
