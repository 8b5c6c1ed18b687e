"""Synthetic traffic with ground truth, for replay and for measuring detection.

``simulate()`` (or ``abuseguard simulate``) runs a *mix* of scenarios over a synthetic
network world (:mod:`abuseguard.sim.world`) and writes the DESIGN.md trace format: one
JSON request per line, in time order, with enrichment fields (``asn``, ``as_org``,
``country``, ``anon``, ``anon_confidence``) so the network checks run without databases,
plus ``status``, ``cost`` (total tokens) and ``duration`` (seconds the origin took).

Ground truth, per line:

* ``label``: ``benign`` or ``abusive``;
* ``kind``: the scenario's name (``browser_chat``, ``resi_pool``, ...);
* ``actor``: the entity that sends the request, one per API key or account. An account
  pool, a router or a low-and-slow operation is *not* one actor: each of its accounts is
  its own actor (``resi_pool/pool1/acct0042``, ``router/r0/acct0007``), because that is
  what the guard sees and acts on, and because "actors mitigated" should count the
  accounts still harvesting. An app backend is one actor (its one key), however many
  addresses it uses; a person is one actor wherever they roam.

Determinism: each source (a person, an app, an account, a router) draws from its own
``random.Random`` seeded by the seed and its name, and the shared world pools come from
the seed; lines are merged by time. Same seed and options, byte-identical output.

Traces are open loop: clients do not react to the guard's decisions (a throttled
script keeps its pace, which is also what a script that ignores Retry-After does).
"""

from __future__ import annotations

from abuseguard.sim.scenarios import ABUSIVE, BENIGN, MIXES, SCENARIOS, Scenario
from abuseguard.sim.world import World
from abuseguard.sim.writer import DEFAULT_START, SimSummary, open_output, simulate

__all__ = [
    "ABUSIVE",
    "BENIGN",
    "DEFAULT_START",
    "MIXES",
    "SCENARIOS",
    "Scenario",
    "SimSummary",
    "World",
    "open_output",
    "simulate",
]
