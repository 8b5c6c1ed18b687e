"""Which operation (cluster of accounts) an identity belongs to, as the background lane last
found it: read by the degrade step (`DegradeContext.cohort`). A plain bounded mapping with
no dependencies, so reading it costs the request path one dict lookup."""

from __future__ import annotations

MAX_COHORTS = 200_000
COHORTS: dict[str, str] = {}


def cohort_of(identity: str) -> str | None:
    return COHORTS.get(identity)


def set_cohort(identity: str, cohort: str | None) -> None:
    if cohort is None:
        COHORTS.pop(identity, None)
        return
    if identity not in COHORTS and len(COHORTS) >= MAX_COHORTS:
        COHORTS.pop(next(iter(COHORTS)))
    COHORTS[identity] = cohort
