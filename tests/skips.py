"""The CI rule on skipped tests: with CI=true (set by `.ci/run`) a skip is a failure unless it
is for the platform, so a green CI means every test ran. `tests/conftest.py` applies it to
every test and collection report; a test that cannot run off Linux uses `linux_only`."""
from __future__ import annotations

import os
import sys

import pytest

PLATFORM_SKIP = "not Linux"  # the one reason a test may skip in CI
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason=f"{PLATFORM_SKIP}: needs /proc")


def fail_skip_in_ci(report) -> None:
    """Turn a skipped report into a failed one, in CI, unless the platform is the reason."""
    if not (report.skipped and os.environ.get("CI") == "true") or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not reason.removeprefix("Skipped: ").startswith(PLATFORM_SKIP):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {reason}"
