"""Build the krew archive of kubectl-kopeck byte for byte the same every time.

`python plugins/krew/build.py DIR` writes DIR/kubectl-kopeck-v<version>.tar.gz and prints its
sha256; `--check` also fails when kopeck.yaml's sha256 or version differ (run it after
changing the launcher or the version). Install locally with
`kubectl krew install --manifest=plugins/krew/kopeck.yaml --archive=DIR/kubectl-kopeck-v<version>.tar.gz`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import sys
import tarfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LAUNCHER = HERE / "kubectl-kopeck"
MANIFEST = HERE / "kopeck.yaml"


def version() -> str:
    """The release version: pyproject's, with krew's leading v."""
    return "v" + tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def archive_bytes() -> bytes:
    """The .tar.gz krew downloads: the launcher, with fixed owner, mode and times."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        data = LAUNCHER.read_bytes()
        info = tarfile.TarInfo("kubectl-kopeck")
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Write the archive; with --check, compare it and the version with the manifest."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="directory to write the archive to")
    parser.add_argument("--check", action="store_true",
                        help="fail when kopeck.yaml's sha256 or version are stale")
    args = parser.parse_args(argv)
    data = archive_bytes()
    digest = hashlib.sha256(data).hexdigest()
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"kubectl-kopeck-{version()}.tar.gz"
    path.write_bytes(data)
    print(f"{path} sha256 {digest}")
    if args.check:
        text = MANIFEST.read_text()
        if digest not in re.findall(r"sha256:\s*([0-9a-f]{64})", text):
            print(f"{MANIFEST}: spec.platforms[].sha256 is stale: set it to {digest}",
                  file=sys.stderr)
            return 1
        if f"version: {version()}" not in text:
            print(f"{MANIFEST}: spec.version must be {version()} (pyproject's version)",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
