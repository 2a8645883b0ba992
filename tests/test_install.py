"""The install says what it needs: the package builds without deprecation banners, and a test
run that skips for missing system packages ends with the one command that enables them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_builds_without_deprecation_warnings(tmp_path):
    src = tmp_path / "src-copy"
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns(".venv", "runs", "site", ".git", "*.egg-info")
    )
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
         str(tmp_path / "wheel"), str(src)],  # fmt: skip
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    output = (run.stdout + run.stderr).lower()
    assert "deprecat" not in output, run.stdout + run.stderr
    assert list((tmp_path / "wheel").glob("vlmsae-*.whl"))


def test_skips_for_missing_packages_end_with_the_command_that_enables_them(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no chromium, no chromedriver on this PATH
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_explore_browser.py")],  # fmt: skip
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    last = [line for line in run.stdout.splitlines() if "tests skipped" in line]
    assert len(last) == 1, run.stdout
    assert (
        "of them need Debian packages: sudo apt-get install -y --no-install-recommends " in last[0]
    )
    assert "chromium chromium-driver fonts-noto-color-emoji unicode-data" in last[0]
    assert ".[browser]" not in run.stdout
