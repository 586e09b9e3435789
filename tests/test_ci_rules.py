"""The CI rule of tests/conftest.py, on small suites run in a subprocess: with CI set, a skipped
data or parity test fails the run (and is listed); the CUDA-only skip stays allowed; without CI
skips pass as before."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
CONFTEST = (Path(__file__).parent / "conftest.py").read_text(encoding="utf-8")
SUITE = {
    "tests/test_data": "import pytest\n\ndef test_needs_data():\n    pytest.skip('data file not found: x.tsv')\n",
    "tests/test_parity": "import pytest\n\npytest.importorskip('no_such_module_here')\n\ndef test_parity():\n    pass\n",
    "tests/test_prefetch": "import pytest\n\n@pytest.mark.skipif(True, reason='page-locked memory needs CUDA')\n"
                           "def test_pinned():\n    pass\n",
    "tests/test_fine": "def test_ok():\n    assert 1 + 1 == 2\n",
}


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None, files: dict[str, str]):
    for old in pytester.path.glob("tests/test_*.py"):
        old.unlink()
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(**files)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "tests")


def test_in_ci_a_data_or_parity_skip_fails_the_run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(pytester, monkeypatch, "true", SUITE)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    for line in ("*skipped in CI (not allowed*", "tests/test_data.py::test_needs_data: *data file not found: x.tsv",
                 "tests/test_parity.py: *could not import 'no_such_module_here'*"):
        result.stdout.fnmatch_lines([line])
    listed = result.stdout.str().split("skipped in CI", 1)[1]
    assert "test_prefetch" not in listed and "test_fine" not in listed
    result.assert_outcomes(passed=1, skipped=3)


def test_outside_ci_skips_pass_and_in_ci_the_cuda_skip_is_allowed(pytester: pytest.Pytester,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run(pytester, monkeypatch, None, SUITE).ret == pytest.ExitCode.OK
    assert _run(pytester, monkeypatch, "false", SUITE).ret == pytest.ExitCode.OK
    allowed = {k: v for k, v in SUITE.items() if k in ("tests/test_prefetch", "tests/test_fine")}
    result = _run(pytester, monkeypatch, "true", allowed)
    assert result.ret == pytest.ExitCode.OK and "skipped in CI" not in result.stdout.str()
    result.assert_outcomes(passed=1, skipped=1)
