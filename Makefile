# The two commands of the quick start: `make serve` and `make test`.
.PHONY: setup serve test lint bench

setup:
	@scripts/bootstrap.sh

serve: setup
	uv run parley serve

lint: setup
	uv run ruff check src tests bench
	uv run ruff format --check src tests bench
	uv run mypy

test: lint
	uv run pytest

bench: setup
	uv run python bench/overhead.py
