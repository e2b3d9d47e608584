# The two commands a newcomer types: `make run` (the whole stack) and `make test` (every test).
.PHONY: run test lint typecheck unit bootstrap bench-bootstrap bench-gateway bench-gateway-ab bench-instructions bench-ingest bench-ingest-scaleout bench-lag bench-replay bench-firewall drill-redis

VENV := .venv/bin

bootstrap:
	@bash deploy/local/bootstrap.sh

bench-bootstrap:
	@bash deploy/local/bootstrap.sh bench

run: bootstrap
	$(VENV)/floopy-stack up

lint: bootstrap
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/lint-imports

typecheck: bootstrap
	$(VENV)/mypy

test: lint typecheck
	$(VENV)/pytest

unit: bootstrap
	$(VENV)/pytest tests/unit

bench-gateway: bench-bootstrap
	$(VENV)/python -m bench.gateway_overhead --seconds 10

# same-run A/B of a revision against the working tree: make bench-gateway-ab BEFORE=<rev>
BEFORE ?= HEAD~1
bench-gateway-ab: bench-bootstrap
	$(VENV)/python -m bench.gateway_ab --before $(BEFORE) --rounds 3 --seconds 15

# instructions per request under callgrind (needs valgrind): make bench-instructions BEFORE=<rev>
bench-instructions: bench-bootstrap
	$(VENV)/python -m bench.instructions --requests 200 --warmup 50 --before $(BEFORE)

bench-ingest: bench-bootstrap
	$(VENV)/python -m bench.ingest --records 60000 --batch-sizes 5000,20000 --paths delivery,json-http,stream-worker

bench-ingest-scaleout: bench-bootstrap
	$(VENV)/python -m bench.ingest_scaleout --records 60000 --processes 1,2,4

bench-lag: bench-bootstrap
	$(VENV)/python -m bench.e2e_lag --rate 100 --seconds 30

bench-replay: bench-bootstrap
	$(VENV)/python -m bench.replay --records 200000

bench-firewall: bench-bootstrap
	$(VENV)/python -m bench.firewall --requests 200

# Redis SIGKILLed and hung by turns under load; raw rows per answered request counted
drill-redis: bootstrap
	$(VENV)/python -m bench.redis_fault_drill --faults 16
