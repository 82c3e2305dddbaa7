"""The CI rule on skips (`skips.py`), run by pytest on throwaway test files with this suite's
own conftest: with CI=true every skip fails but the platform one; without it, skips are skips."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = "pytester"

TESTS = '''
import pytest
from skips import linux_only

def test_runs():
    pass

@pytest.mark.skipif(True, reason="tmux is not installed")
def test_needs_a_tool():
    pass

def test_skips_itself():
    pytest.skip("no network")

@pytest.mark.skipif(True, reason="not Linux: needs /proc")
def test_for_another_platform():
    pass
'''
SKIPPED_MODULE = '''
import pytest
pytest.importorskip("a_module_that_is_not_installed")
'''


@pytest.mark.parametrize("ci", ["true", None])
def test_a_skip_fails_in_ci_unless_the_platform_is_the_reason(pytester, monkeypatch, ci):
    here = Path(__file__).parent
    pytester.makeconftest((here / "conftest.py").read_text())
    monkeypatch.setenv("PYTHONPATH", str(here))  # where the conftest finds `skips`
    pytester.makepyfile(test_some=TESTS, test_skipped_module=SKIPPED_MODULE)
    if ci:
        monkeypatch.setenv("CI", ci)
    else:
        monkeypatch.delenv("CI", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--continue-on-collection-errors")
    if ci:
        # the skipif one fails in setup, the module at collection (errors); the inner skip in the test
        result.assert_outcomes(passed=1, skipped=1, failed=1, errors=2)
        result.stdout.fnmatch_lines(["*skipped in CI, where every test must run*tmux is not installed*"])
        assert result.ret != 0
    else:
        result.assert_outcomes(passed=1, skipped=4)
        assert result.ret == 0
