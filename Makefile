# qiao: `make demo` and `make test` work on a fresh machine (as root).
.PHONY: setup test unit lint demo bench bench-peers bench-ports bench-soak bench-cni bench-docker bench-plugin bench-observe bench-explain clean

setup:
	@scripts/setup.sh

lint: setup
	.venv/bin/ruff check src tests bench scripts
	.venv/bin/mypy

unit: setup
	.venv/bin/pytest -q tests/unit

test: setup lint
	.venv/bin/pytest -q tests

demo: setup
	.venv/bin/python scripts/demo.py

bench: setup
	.venv/bin/python -m bench.attach

bench-peers: setup
	scripts/install-peers.sh

bench-ports: setup
	.venv/bin/python -m bench.ports

bench-soak: setup
	.venv/bin/python -m bench.soak $(if $(CYCLES),--cycles $(CYCLES))

bench-cni: setup
	.venv/bin/python -m bench.cni

bench-docker: setup
	.venv/bin/python -m bench.docker

bench-plugin: setup
	.venv/bin/python -m bench.plugin_calls

bench-observe: setup
	.venv/bin/python -m bench.observe

bench-explain: setup
	.venv/bin/python -m bench.explain

clean:
	rm -rf .venv build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
