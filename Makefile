# The two entry points of the README. Both set up .venv first (idempotent).
.PHONY: setup demo test lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/applefair demo $(ARGS)

test: setup
	.venv/bin/ruff check src tests bench
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache .ruff_cache
