"""`kopeck crds`: write crds/*.yaml from the models, or check that they are current."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from kopeck.api.crdgen import all_crds, render


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `kopeck crds`."""
    parser.add_argument("--dir", type=Path, default=Path("crds"), help="output folder")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the files differ from the models"
    )


def run(args: argparse.Namespace) -> int:
    """Write or check every CRD file; a stale file is shown as a diff."""
    out_dir: Path = args.dir
    stale = 0
    for name, crd in all_crds().items():
        path = out_dir / name
        text = render(crd)
        if args.check:
            current = path.read_text() if path.exists() else ""
            if current != text:
                stale += 1
                sys.stderr.writelines(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        fromfile=str(path),
                        tofile=f"{path} (from kopeck.api)",
                    )
                )
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(
            f"{stale} CRD file(s) in {out_dir}/ are stale: run `kopeck crds` and commit them",
            file=sys.stderr,
        )
        return 1
    if args.check:
        print(f"CRDs in {out_dir}/ match kopeck.api")
    return 0
