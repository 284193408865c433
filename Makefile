# Thin entry points; the work lives in scripts/ and the kopeck command.
.PHONY: setup demo test lint unit bench crds image clean

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/kopeck demo

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy operator/kopeck node-probe/kopeck_probe
	.venv/bin/kopeck crds --check

test: setup lint
	.venv/bin/pytest

unit:
	.venv/bin/pytest tests/unit -q

bench: setup
	scripts/bench.sh

crds:
	.venv/bin/kopeck crds
	.venv/bin/kopeck crds --dir deploy/base/crds

image:
	docker build -t kopeck:$$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("kopeck"))') .

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache
