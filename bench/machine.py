"""What the figures were measured on: CPU, memory, versions, source state."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.procs import REPO

PACKAGES = ("uvicorn", "starlette", "websockets", "asyncpg", "msgspec", "uvloop", "httptools")


def _first(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def describe(pg_version: str, fd_limit: int) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "ram": _first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "packages": versions,
        "nofile_limit": fd_limit,
        "somaxconn": Path("/proc/sys/net/core/somaxconn").read_text().strip(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_in_broker": _git("status", "--porcelain", "--", "broker", "protocol",
                                      "schema.sql").splitlines(),
    }
