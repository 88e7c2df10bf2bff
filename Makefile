# The two commands of the README. Both are idempotent and install what they need first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
UV      := $(BIN)/uv
UV_VERSION := 0.13.8
# Debian's Chromium, for the browser tests (test tools may not download browsers here).
CHROMIUM := /usr/bin/chromium
# Debian's PostgreSQL 15, for the team-stack tests (they start their own cluster in a temp dir).
PG_CTL := /usr/lib/postgresql/15/bin/pg_ctl
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: run test install install-test clean

run: install
	$(BIN)/shrinkflow init
	$(BIN)/shrinkflow run

test: install-test $(CHROMIUM) $(PG_CTL)
	$(BIN)/pytest

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# The venv holds uv itself; --inexact keeps it there while syncing the locked set.
# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as on the CI machines) nothing caches
# bytecode at run time, and every process compiled its ~4,000 modules from source again (~18 s
# of a 58 s no-op run, measured 2026-12-01).
$(UV):
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --inexact --no-dev --compile-bytecode
	touch $@

$(VENV)/.installed-test: $(UV) pyproject.toml uv.lock
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --inexact --no-dev --extra test --compile-bytecode
	touch $@ $(VENV)/.installed

$(CHROMIUM):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

$(PG_CTL):
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15

clean:
	rm -rf artifacts metrics plots reports mlflow.db mlartifacts test-output .pytest_cache
