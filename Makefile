# bzi-broadcast — the two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench catalogs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/bzi-broadcast serve --demo

test: $(STAMP) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check bzi_broadcast tests bench
	$(BIN)/ruff format --check bzi_broadcast tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# One pytest process per core (pytest-xdist): each has its own PostgreSQL database and temp dirs.
# The 25 slowest tests are listed at the end: where the suite's time goes (issue 14, item 6).
# One test at a time to each worker, the slowest first (tests/conftest.py: SLOWEST_FIRST).
unit: $(STAMP)
	$(BIN)/pytest -n auto --maxschedchunk 1 --durations=25

bench: $(STAMP)
	$(BIN)/python -m bench.render
	$(BIN)/python -m bench.email_fanout
	$(BIN)/python -m bench.telegram_fanout
	$(BIN)/python -m bench.preview
	$(BIN)/python -m bench.mastodon_split
	$(BIN)/python -m bench.cli
	$(BIN)/python -m bench.dkim_sign

catalogs: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k N_ -k _ -k gettext -k ngettext:1,2 \
		--no-location --omit-header -o bzi_broadcast/locale/messages.pot .
	$(BIN)/pybabel update -i bzi_broadcast/locale/messages.pot -d bzi_broadcast/locale \
		-D messages -l en --no-fuzzy-matching

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
