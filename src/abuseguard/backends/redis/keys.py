"""Redis key names: every key of one identity shares a hash tag, so one Cluster slot.

Identities are already hashed or IP-derived (``k:<hex>``, ``i:<ip key>``): no raw API key
ever reaches Redis. Layout, with the default prefix ``ag``::

    ag:{k:ab12..}:b             token bucket ("tokens ts", PX = time to refill)
    ag:{k:ab12..}:ban           ban end time (PX = ban length)
    ag:{k:ab12..}:q:<name>      window quota (fixed: counter; sliding: hash of windows)
    ag:{k:ab12..}:c             concurrency leases (sorted set scored by lease expiry)
    ag:{k:ab12..}:fo:<dim>:<e>  fan-out HyperLogLog of one half-horizon epoch
    ag:{k:ab12..}:r:<limits>:b  a route's or plan's token bucket (:q:<name> its quotas,
                                :c its concurrency leases; see `route_ops`)
    ag:{n1:203.0.113.7}:b       network bucket of an IP (n2 prefix, n3 ASN)
    ag:{n1:203.0.113.7}:fi:<e>  fan-in HyperLogLog (accounts seen behind that network)

Every key carries a TTL (see decide.lua): Redis memory stays bounded by the active set.
Sketch keys are created only for accounts and networks a worker saw twice
(`probation`), so a one-shot client costs Redis its bucket keys alone (about
100 bytes each, until the bucket refills).
"""

from __future__ import annotations

from abuseguard.errors import ConfigError

FANOUT_DIMS = ("ip", "pfx", "asn", "cc")  # order of layout.SK_IPS .. SK_COUNTRIES


class IdentityKeys:
    """The keys of one identity, built once and cached by :class:`KeySpace`."""

    __slots__ = ("ban", "bucket", "conc", "epoch", "fanout", "quotas")

    def __init__(self, base: str, quota_names: tuple[str, ...]) -> None:
        self.bucket = base + ":b"
        self.ban = base + ":ban"
        self.conc = base + ":c"
        self.quotas = tuple(f"{base}:q:{name}" for name in quota_names)
        self.epoch = -1
        self.fanout: tuple[str, ...] = ()  # (cur, prev) per dimension, for self.epoch

    def fanout_keys(self, base: str, epoch: int) -> tuple[str, ...]:
        if epoch != self.epoch:
            self.fanout = tuple(
                key
                for dim in FANOUT_DIMS
                for key in (f"{base}:fo:{dim}:{epoch}", f"{base}:fo:{dim}:{epoch - 1}")
            )
            self.epoch = epoch
        return self.fanout


class KeySpace:
    """Names keys under ``prefix``; caches the keys of recently seen identities."""

    def __init__(
        self, prefix: str = "ag", quota_names: tuple[str, ...] = (), *, cache_size: int = 65536
    ) -> None:
        if not prefix or any(c in prefix for c in "{} \r\n"):
            raise ConfigError(
                "RedisBackend.prefix", f"use a short name without braces, got {prefix!r}"
            )
        self.prefix = prefix
        self.quota_names = quota_names
        self.cache_size = cache_size
        self._identities: dict[str, IdentityKeys] = {}
        self._networks: dict[tuple[int, object], str] = {}

    @staticmethod
    def tag(identity: str) -> str:
        """The hash tag of an identity: what decides its Cluster slot."""
        return "{" + identity + "}"

    def base(self, identity: str) -> str:
        return f"{self.prefix}:{{{identity}}}"

    def of(self, identity: str) -> IdentityKeys:
        keys = self._identities.get(identity)
        if keys is None:
            if len(self._identities) >= self.cache_size:
                self._identities.clear()
            keys = self._identities[identity] = IdentityKeys(self.base(identity), self.quota_names)
        return keys

    def route(self, identity: str, limits: str) -> str:
        """Base of the keys of the route or plan limits named ``limits`` ("route-v1-chat",
        letters, digits and dashes) for one identity: in the identity's slot."""
        return f"{self.prefix}:{{{identity}}}:r:{limits}"

    def fanout(self, identity: str, keys: IdentityKeys, epoch: int) -> tuple[str, ...]:
        return keys.fanout_keys(self.base(identity), epoch)

    def network_base(self, kind: int, key: object) -> str:
        """Base of the keys of a network identity (kind from engine.layout: 1 ip, 2 prefix,
        3 asn, 4 persona)."""
        found = self._networks.get((kind, key))
        if found is None:
            if len(self._networks) >= self.cache_size:
                self._networks.clear()
            found = self._networks[(kind, key)] = f"{self.prefix}:{{n{kind}:{key}}}"
        return found


__all__ = ["FANOUT_DIMS", "IdentityKeys", "KeySpace"]
