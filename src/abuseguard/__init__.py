"""abuseguard: ASGI middleware against API abuse and model-output harvesting."""

from __future__ import annotations

from abuseguard.decision import Action, Decision, PolicyState
from abuseguard.request import RequestInfo

__all__ = ["Action", "Decision", "PolicyState", "RequestInfo"]
__version__ = "0.1.0"
