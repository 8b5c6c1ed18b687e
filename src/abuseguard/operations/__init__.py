"""Operations: accounts linked into clusters from shared evidence, in the background lane.

`EvidenceReader` reads what one request says (persona, network, system prompt, request
shape, timing, creation day); `OperationLinker` links accounts whose evidence agrees on
several rare kinds at once and scores each cluster; the lane
(`abuseguard.lane.BackgroundLane`) feeds it and writes each member's prior.
"""

from abuseguard.operations.evidence import KINDS, Evidence, EvidenceReader, Observed
from abuseguard.operations.linker import Cluster, OperationLinker, OperationsConfig

__all__ = [
    "KINDS",
    "Cluster",
    "Evidence",
    "EvidenceReader",
    "Observed",
    "OperationLinker",
    "OperationsConfig",
]
