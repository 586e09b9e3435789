"""Fixtures shared by test modules, and a suite-wide rule: in CI a skipped test fails the run.

Tests skip when ``../shared/data``, ``transformers`` or the MiniLM package is missing, so a
laptop without them still runs the rest. CI installs all of them (``make test`` via ``.ci/run``),
so there a skip means a parity or real-data test silently did not run. When the ``CI``
environment variable is set (CI services set ``CI=true``), every skip except those listed in
:data:`ALLOWED_IN_CI` (what no CI machine here can provide) is listed at the end and the run
exits with status 1.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

# No test reaches the Hugging Face Hub or touches a user's caches: offline, with empty caches of the
# session's own, removed at its end. Set here, before transformers or datasets is imported (both read
# these variables once, at import; pretune.hub reads them at each call, so tests may point them
# elsewhere).
_HF_HOME = tempfile.mkdtemp(prefix="pretune-tests-hf-")
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=_HF_HOME,
                  HF_HUB_CACHE=os.path.join(_HF_HOME, "hub"), HF_DATASETS_CACHE=os.path.join(_HF_HOME, "datasets"))
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)

# (test file, text of the skip reason): skips CI cannot avoid.
ALLOWED_IN_CI = (
    ("tests/test_prefetch.py", "needs CUDA"),  # CI machines have no GPU
)

_skips: list[str] = []

# What the suite computes must not depend on the CPU it lands on: `--precision auto` picks bf16 on a
# CPU with AMX or AVX512-BF16 and fp32 elsewhere, and equalities such as 2 processes against 1 hold
# to 1e-5 in fp32 only. Set before any test starts, so torchrun and CLI subprocesses inherit it;
# the tests of the auto rule itself remove it (tests/test_precision.py).
os.environ.setdefault("PRETUNE_AUTO_PRECISION", "fp32")


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def _note(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    path, reason = report.nodeid.split("::")[0], _reason(report)
    if not any(path == allowed and text in reason for allowed, text in ALLOWED_IN_CI):
        _skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _note(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _note(report)  # a whole module skipped, e.g. by a module-level importorskip


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if running_in_ci() and _skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if running_in_ci() and _skips:
        terminalreporter.section("skipped in CI (not allowed: install the data, transformers and MiniLM)", red=True)
        for line in _skips:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster when the cores are shared.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
