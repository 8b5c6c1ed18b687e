"""The enrich stage's one interface: what an enricher takes and what it fills.

An enricher reads one request (`RequestInfo`) and its normalized client address
(`ClientAddress`, from the identity stage) and answers facts about it; `fills` names the
fields of `abuseguard.guard.Prepared` those facts feed, the engine's inputs. Enrichers
keep their own bounded caches and never raise on bad input.

The sources: `abuseguard.intel.network.NetworkView` (MaxMind intel, hosting ASNs, CIDR
rules -> ``profile``), `abuseguard.intel.client.ClientEnricher` (user-agent class and
header persona -> ``ua_class``, ``persona``, ``persona_mismatch``) and
`abuseguard.intel.content.ContentFingerprinter` (prompt template -> ``simhash``,
``template_id``, ``elicitation``, ``has_content``). `Guard.prepare` calls each source's
own entry point (``profile``, ``client_of``, ``fingerprint``) rather than ``enrich``: it
is the hot path, and ``enrich`` costs one more Python call per source (see
docs/architecture_enrich.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from abuseguard.identity import ClientAddress
    from abuseguard.request import RequestInfo

FactsT_co = TypeVar("FactsT_co", covariant=True)


class Enricher(Protocol[FactsT_co]):
    """One source of facts about a request."""

    @property
    def fills(self) -> tuple[str, ...]:
        """The `Prepared` fields this enricher's facts feed."""
        ...

    def enrich(self, info: RequestInfo, address: ClientAddress) -> FactsT_co:
        """Facts about `info`, whose client address the identity stage resolved to
        `address`; never raises."""
        ...
