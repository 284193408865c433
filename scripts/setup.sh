#!/usr/bin/env bash
# Install everything `make demo` and `make test` need on a fresh Debian machine, idempotently:
# Debian packages, a Python venv with kopeck and its test tools, and the Go builds of the
# local control plane and of kube-score (cached outside the repo, in ~/.cache/kopeck or
# $KOPECK_CACHE).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
t0=$(date +%s)

# Real peers and kernel tools the product and its tests use.
# clang + llvm: the eBPF assembler is checked against the compiler (tests/unit/test_ebpf_asm.py).
DEBIAN_PACKAGES=(iproute2 softflowd nfdump stress-ng iperf3 prometheus bpftool openssl clang llvm)
missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  step "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v go >/dev/null; then
  echo "Go is needed to build etcd and kube-apiserver (https://go.dev/doc/install)" >&2
  exit 1
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "python venv (.venv)"
  "$PY" -m venv .venv
fi
stamp=.venv/.kopeck-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "pip install -e .[test,report]"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test,report]'
  touch "$stamp"
fi

step "control plane binaries (Go build, cached)"
.venv/bin/kopeck cluster build

# kube-score scores the rendered deploy/base in tests/unit/test_kube_score.py.
step "linters for the manifests (kube-score, Go build, cached)"
.venv/bin/python scripts/build_tools.py

printf '\nsetup done in %ss\n' "$(( $(date +%s) - t0 ))"
