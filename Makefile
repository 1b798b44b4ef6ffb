# The two commands of the quick start: `make serve` and `make test`.
.PHONY: setup serve test lint fuzz bench

# uv at the version scripts/bootstrap.sh pins (installed there on first use).
UV = .tools/uv/bin/uv

setup:
	@scripts/bootstrap.sh

serve: setup
	$(UV) run parley serve

lint: setup
	$(UV) run ruff check src tests bench
	$(UV) run ruff format --check src tests bench
	$(UV) run mypy

test: lint
	$(UV) run pytest -n 2 --dist loadfile
	$(UV) run python -m tests.api_fuzz

# The API contract: Schemathesis over every operation of a real `parley serve` (tests/api_fuzz).
fuzz: setup
	$(UV) run python -m tests.api_fuzz

bench: setup
	for script in bench/*.py; do $(UV) run python "$$script" || exit 1; done
