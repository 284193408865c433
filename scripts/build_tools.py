#!/usr/bin/env python3
"""Build the Go linters the deploy tests run, once per version, into the kopeck cache.

`kube-score` scores the rendered deploy/base the way platform teams do; it is built from the
Go module proxy (``go install module/cmd@version``) into
``$KOPECK_CACHE/tools/<tool>/<version>/bin`` (default ``~/.cache/kopeck``), next to the
control plane that ``kopeck cluster build`` caches there. A second run finds the binary and
returns at once; concurrent runs wait on a lock, then find it too.

    .venv/bin/python scripts/build_tools.py            # build what is missing, print paths
    .venv/bin/python scripts/build_tools.py --path kube-score   # only the path (builds if needed)

The timing and progress lines come from kopeck.localcluster.build.Progress, as for the
control plane.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from kopeck.localcluster.build import BuildError, Progress, go_install, locked
from kopeck.localcluster.versions import cache_root


@dataclass(frozen=True)
class GoTool:
    """A command installed with ``go install <package>@<version>``."""

    name: str
    package: str
    version: str
    ldflags: str = "-s -w"

    @property
    def bin(self) -> Path:
        return cache_root() / "tools" / self.name / self.version / "bin" / self.name


KUBE_SCORE = GoTool(
    name="kube-score",
    package="github.com/zegl/kube-score/cmd/kube-score",
    version="v1.20.0",  # the newest tag the Go module proxy served (2025-04-28)
    ldflags="-s -w -X main.version=v1.20.0",
)
TOOLS = {t.name: t for t in (KUBE_SCORE,)}


def ensure(tool: GoTool, progress: Progress) -> Path:
    """The tool's binary, built first when it is not in the cache."""
    base = tool.bin.parent.parent
    with locked(base / ".lock"):
        if os.access(tool.bin, os.X_OK):
            return tool.bin
        tmp = base / ".gobin"
        tmp.mkdir(parents=True, exist_ok=True)
        with progress.phase(f"{tool.name} {tool.version}: go install from the module proxy"):
            go_install(tool.name, f"{tool.package}@{tool.version}", tmp, base / "build.log",
                       progress, tool.ldflags)
        tool.bin.parent.mkdir(parents=True, exist_ok=True)
        (tmp / tool.name).replace(tool.bin)
        tmp.rmdir()
    return tool.bin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=sorted(TOOLS), help="print only this tool's path")
    args = parser.parse_args(argv)
    wanted = [TOOLS[args.path]] if args.path else list(TOOLS.values())
    progress = Progress()
    try:
        for tool in wanted:
            path = ensure(tool, progress)
            print(path if args.path else f"{tool.name} {tool.version}: {path}")
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
