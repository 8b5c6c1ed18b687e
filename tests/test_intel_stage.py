"""The enrich stage (issue 15 item 5): the core imports no web framework, enrichers share one
interface, IP parsing has one implementation, and simulated traces are written through the
trace schema."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_nothing_from_starlette() -> None:
    # A fresh interpreter: this test process has Starlette loaded by other tests.
    code = (
        "import sys, abuseguard.guard; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'starlette'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"


def test_public_adapter_names_still_import_from_the_package() -> None:
    import abuseguard
    from abuseguard.middleware import AbuseGuard, current_decision

    assert abuseguard.AbuseGuard is AbuseGuard
    assert abuseguard.current_decision is current_decision
    assert {"AbuseGuard", "current_decision"} <= set(abuseguard.__all__)
