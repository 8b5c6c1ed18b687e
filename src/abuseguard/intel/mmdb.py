"""MaxMind DB files: opening (a private copy or a shared mapping), type validation against
the configured kind, lookups that never raise, and re-opening files that changed on disk.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import maxminddb

from abuseguard.intel.ip import ParsedIP

logger = logging.getLogger("abuseguard.intel")

# The database kinds, in the order their facts are merged (first answer wins for
# asn and country; city comes before country because it is the finer product).
KINDS: tuple[str, ...] = (
    "asn",
    "city",
    "country",
    "anonymous_ip",
    "anonymous_plus",
    "residential_proxy",
    "ip_risk",
    "connection_type",
)

# Accepted products (database_type without its vendor prefix) per configured kind.
# City and Enterprise databases carry the country too, so they are accepted as country.
_KIND_PRODUCTS: dict[str, tuple[str, ...]] = {
    "asn": ("ASN", "ISP"),
    "city": ("City", "Enterprise"),
    "country": ("Country", "City", "Enterprise"),
    "anonymous_ip": ("Anonymous-IP",),
    "anonymous_plus": ("Anonymous-Plus",),
    "residential_proxy": ("Residential-Proxy",),
    "ip_risk": ("IP-Risk",),
    "connection_type": ("Connection-Type",),
}
_VENDOR_PREFIX = re.compile(r"^(?:GeoIP2|GeoLite2|GeoIP)-")
_COMPAT = re.compile(r"\(compat=([^)]+)\)")


class IntelError(ValueError):
    """A database could not be used (start-up or configuration); names the path and why."""


def database_product(database_type: str) -> str:
    """``"GeoIP2-City"`` -> ``"City"``; honours ``"(compat=GeoLite2-ASN)"`` suffixes."""
    compat = _COMPAT.search(database_type)
    name = compat.group(1).strip() if compat else database_type.strip()
    return _VENDOR_PREFIX.sub("", name)


def _product_matches(product: str, accepted: str) -> bool:
    # Regional City editions are named like "City-Europe".
    return product == accepted or product.startswith(accepted + "-")


def kind_of_database_type(database_type: str) -> str | None:
    """The kind a database type is used as (``"GeoLite2-City"`` -> ``"city"``), or None."""
    product = database_product(database_type)
    for kind in KINDS:
        if any(_product_matches(product, accepted) for accepted in _KIND_PRODUCTS[kind]):
            return kind
    return None


def _expected_types(kind: str) -> str:
    return " or ".join(f"*-{product}" for product in _KIND_PRODUCTS[kind])


FileSignature = tuple[int, int, int, int]

# How a database file is opened (see `Database.open`).
OPEN_MODES: tuple[str, ...] = ("copy", "mmap")
# Attempts to take a copy while the file keeps changing under it.
_COPY_ATTEMPTS = 3


def _signature(path: Path) -> FileSignature | None:
    """Identity of the file's current content (device, inode, size, mtime); None if gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _open_private_copy(
    path: Path, signature: FileSignature | None
) -> tuple[Any, FileSignature | None]:
    """A reader over a private copy of `path`, which no later write to `path` can reach,
    and the signature of the file it copied.

    The copy lives in an anonymous memory file (``memfd``, Linux) or, elsewhere, in a
    temporary file unlinked as soon as it is mapped. The copy is only used when the file
    did not change while it was being read (same signature before and after).
    """
    for _ in range(_COPY_ATTEMPTS):
        if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
            fd = os.memfd_create(f"abuseguard-{path.name}", os.MFD_CLOEXEC)
            try:
                with open(path, "rb") as source, open(fd, "wb", closefd=False) as copy:
                    shutil.copyfileobj(source, copy, 1 << 20)
                settled = _signature(path) == signature
                reader = _open_copy(f"/proc/self/fd/{fd}", path)
            finally:
                os.close(fd)  # the reader's mapping keeps the memory file alive
        else:
            with tempfile.NamedTemporaryFile(
                prefix="abuseguard-", suffix=".mmdb", delete=False
            ) as copy:
                try:
                    with open(path, "rb") as source:
                        shutil.copyfileobj(source, copy, 1 << 20)
                    copy.flush()
                    settled = _signature(path) == signature
                    reader = _open_copy(copy.name, path)
                finally:
                    os.unlink(copy.name)
        if settled:
            return reader, signature
        reader.close()
        signature = _signature(path)
    raise OSError(0, "the file kept changing while it was copied")


def _open_copy(copy_path: str, original: Path) -> Any:
    try:
        return maxminddb.open_database(copy_path, maxminddb.MODE_AUTO)
    except maxminddb.InvalidDatabaseError as exc:
        # Name the file the operator knows, not the private copy.
        message = str(exc).replace(copy_path, os.fspath(original))
        raise maxminddb.InvalidDatabaseError(message) from None


class Database:
    """One open MaxMind DB file, of a known kind, whose lookups never raise."""

    def __init__(
        self,
        *,
        kind: str,
        path: Path,
        reader: Any,
        database_type: str,
        ip_version: int,
        build_epoch: int,
        signature: FileSignature | None,
        check_type: bool,
        open_mode: str = "copy",
    ) -> None:
        self.kind = kind
        self.path = path
        self.reader = reader
        self.database_type = database_type
        self.ip_version = ip_version
        self.build_epoch = build_epoch
        self.signature = signature
        self.check_type = check_type
        self.open_mode = open_mode
        self._warned = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        kind: str | None = None,
        *,
        check_type: bool = True,
        open_mode: str = "copy",
    ) -> Database:
        """Open `path` (C extension when available) and check its type against `kind`.

        With ``kind=None`` the kind is detected from the metadata. With ``check_type=False``
        any well-formed file is accepted as `kind` (used to probe foreign or damaged files).
        ``open_mode="copy"`` (the default) reads a private in-memory copy of the file, so
        that rewriting or truncating the file in place cannot crash the process (a mapped
        file that shrinks raises SIGBUS); it costs the file's size in memory per process.
        ``"mmap"`` maps the file itself: no copy, the page cache is shared between
        processes, but the file must only ever be replaced atomically (write, then rename).
        Raises IntelError naming the path, the kind and the problem.
        """
        label = kind or "MaxMind"
        if kind is not None and kind not in _KIND_PRODUCTS:
            raise IntelError(f"unknown database kind {kind!r}; known kinds: {', '.join(KINDS)}")
        if open_mode not in OPEN_MODES:
            raise IntelError(
                f"open_mode: must be one of {', '.join(OPEN_MODES)}, got {open_mode!r}"
            )
        if isinstance(path, str) and not path.strip():
            raise IntelError(f"{label} database: empty path")
        path = Path(path).expanduser()
        signature = _signature(path)
        if path.is_dir():
            raise IntelError(f"{label} database {path}: is a directory, not a file")
        try:
            if open_mode == "copy":
                reader, signature = _open_private_copy(path, signature)
            else:
                reader = maxminddb.open_database(os.fspath(path), maxminddb.MODE_AUTO)
        except FileNotFoundError:
            raise IntelError(f"{label} database {path}: file not found") from None
        except OSError as exc:
            raise IntelError(f"{label} database {path}: cannot read ({exc.strerror})") from None
        except Exception as exc:
            raise IntelError(f"{label} database {path}: not a valid MaxMind DB ({exc})") from None
        try:
            database = cls._checked(reader, path, kind, check_type, signature)
        except BaseException:
            reader.close()
            raise
        database.open_mode = open_mode
        return database

    @classmethod
    def _checked(
        cls,
        reader: Any,
        path: Path,
        kind: str | None,
        check_type: bool,
        signature: FileSignature | None,
    ) -> Database:
        label = kind or "MaxMind"
        try:
            meta = reader.metadata()
            database_type = meta.database_type
            ip_version = meta.ip_version
            build_epoch = meta.build_epoch
        except Exception as exc:
            raise IntelError(f"{label} database {path}: unreadable metadata ({exc})") from None
        if not isinstance(database_type, str) or ip_version not in (4, 6):
            raise IntelError(f"{label} database {path}: malformed metadata")
        if kind is None:
            detected = kind_of_database_type(database_type)
            if detected is None:
                raise IntelError(
                    f"database {path}: unsupported database type {database_type!r} "
                    "(expected ASN, ISP, Country, City, Enterprise, Anonymous-IP, "
                    "Anonymous-Plus, Residential-Proxy, IP-Risk or Connection-Type)"
                )
            kind = detected
        elif check_type:
            product = database_product(database_type)
            if not any(_product_matches(product, a) for a in _KIND_PRODUCTS[kind]):
                raise IntelError(
                    f"{kind} database {path}: wrong database type {database_type!r} "
                    f"(expected {_expected_types(kind)})"
                )
        probes = ("1.1.1.1", "2001:4860::1") if ip_version == 6 else ("1.1.1.1",)
        for probe in probes:
            try:
                reader.get_with_prefix_len(probe)
            except Exception as exc:
                raise IntelError(f"{kind} database {path}: corrupt ({exc})") from None
        return cls(
            kind=kind,
            path=path,
            reader=reader,
            database_type=database_type,
            ip_version=ip_version,
            build_epoch=build_epoch if isinstance(build_epoch, int) else 0,
            signature=signature,
            check_type=check_type,
        )

    def reopen(self) -> Database:
        """A fresh `Database` on the same path and kind (raises IntelError like `open`)."""
        return Database.open(
            self.path, self.kind, check_type=self.check_type, open_mode=self.open_mode
        )

    def get(self, parsed: ParsedIP) -> tuple[object, int] | None:
        """(record or None, prefix length) for `parsed`; None when this file cannot answer.

        IPv6 addresses in an IPv4-only file give None (no data, no network constraint).
        A decoding error is logged once per file and gives None.
        """
        version, _, text = parsed
        if version == 6 and self.ip_version == 4:
            return None
        try:
            record, prefix_len = self.reader.get_with_prefix_len(text)
        except Exception as exc:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "%s database %s: lookup failed, answering without it (%s)",
                    self.kind,
                    self.path,
                    exc,
                )
            return None
        bits = 32 if version == 4 else 128
        if not isinstance(prefix_len, int) or not 0 <= prefix_len <= bits:
            return None
        return record, prefix_len

    def close(self) -> None:
        self.reader.close()


def reload_changed(
    databases: Sequence[Database], failed: dict[str, FileSignature | None]
) -> tuple[Database, ...] | None:
    """Re-open every database whose file changed on disk; the new set, or None when no
    reader was swapped. A replacement that is missing, corrupt or of the wrong type keeps
    the old reader serving; `failed` (path key -> signature of the bad file) makes that
    warning come once per replacement. The replaced readers are not closed: a lookup on
    another thread may still be using one; each unmaps its file when its last reference goes.
    """
    swapped = False
    current = list(databases)
    for i, database in enumerate(current):
        key = f"{database.kind}:{database.path}"
        signature = _signature(database.path)
        if signature == database.signature:
            failed.pop(key, None)
            continue
        if key in failed and failed[key] == signature:
            continue
        if signature is None:
            failed[key] = None
            logger.warning(
                "%s database %s: file is missing; still serving the copy loaded before",
                database.kind,
                database.path,
            )
            continue
        try:
            fresh = database.reopen()
        except IntelError as exc:
            failed[key] = signature
            logger.warning("%s; still serving the copy loaded before", exc)
            continue
        failed.pop(key, None)
        current[i] = fresh
        swapped = True
        logger.info("%s database %s: reloaded (%s)", fresh.kind, fresh.path, fresh.database_type)
    return tuple(current) if swapped else None
