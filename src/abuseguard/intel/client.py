"""The client enricher: the user-agent class and the header persona of a request, cached
per header shape (see `abuseguard.intel.agents` and `abuseguard.intel.persona`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from abuseguard.intel.agents import AgentClassifier
from abuseguard.intel.persona import FINGERPRINT_VALUE_HEADERS, persona_hash, persona_mismatch
from abuseguard.scope_headers import ScopeHeaders

if TYPE_CHECKING:
    from abuseguard.identity import ClientAddress
    from abuseguard.request import RequestInfo

# (client class, persona hash, persona mismatch)
ClientFacts = tuple[int, int, float]

_MAX_SHAPES = 4096
_MAX_CLIENTS = 16384


class ClientEnricher:
    """Client class, persona and persona mismatch of a request, from its user agent and
    headers; an `abuseguard.intel.enricher.Enricher`. Both caches are bounded."""

    fills: tuple[str, ...] = ("ua_class", "persona", "persona_mismatch")

    def __init__(self, agents: AgentClassifier | None = None) -> None:
        self.agents = agents if agents is not None else AgentClassifier()
        self.clients: dict[tuple[object, ...], ClientFacts] = {}
        self.shapes: dict[tuple[object, ...], tuple[int, tuple[str, ...]]] = {}
        self._next_shape = 0

    def enrich(self, info: RequestInfo, address: ClientAddress) -> ClientFacts:
        return self.client_of(info.ua, info.headers)

    def client_of(self, ua: str | None, headers: Mapping[str, str]) -> ClientFacts:
        """Client class, persona and persona mismatch, cached per header shape: the UA,
        the header names in order and the values of the few headers whose value is part of
        the persona. Each list of names is looked up once and stands for a small number in
        the second key, so a hit compares the names once, not twice."""
        # Headers read from the raw ASGI pairs are keyed by their undecoded names.
        names: tuple[object, ...] = (
            headers.raw_names() if type(headers) is ScopeHeaders else tuple(headers)
        )
        shape = self.shapes.get(names)
        if shape is None:
            if len(self.shapes) >= _MAX_SHAPES:
                self.shapes.clear()
                self.clients.clear()  # their keys hold numbers of the shapes just dropped
            value_names = tuple(n for n in headers if n in FINGERPRINT_VALUE_HEADERS)
            shape = self.shapes[names] = (self._next_shape, value_names)
            self._next_shape += 1
        shape_id, value_names = shape
        key = (ua, shape_id, *[headers[n] for n in value_names]) if value_names else (ua, shape_id)
        hit = self.clients.get(key)
        if hit is not None:
            return hit
        agent = self.agents.classify(ua)
        result = (
            int(agent.client_class),
            persona_hash(tuple(headers), headers, agent),
            persona_mismatch(agent, headers),
        )
        if len(self.clients) >= _MAX_CLIENTS:
            self.clients.clear()
        self.clients[key] = result
        return result
