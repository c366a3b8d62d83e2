# edgelr: two entry points for a fresh machine.
#   make demo   creates .venv, installs edgelr and runs `edgelr demo`
#   make test   creates .venv, installs edgelr[test] and the Debian packages the tests need, runs pytest
# Re-running is fast: installs are redone only when pyproject.toml (or this list) changes.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# Debian packages the tests use: a real sshd, the real adb server, Fashion-MNIST, a headless browser,
# a POSIX shell for the Android harness, ip netns for a separate "device" host, a PostgreSQL server
# for the shared history.
APT_PACKAGES := openssh-server adb dataset-fashion-mnist chromium iproute2 dash busybox procps mksh postgresql
PYTEST_ARGS ?=
# The suite runs in 2 worker processes (pytest-xdist), a test file per worker: most of its time is spent
# waiting on real servers and device processes, so 2 workers fit 2 cores. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

.PHONY: demo test test-fast test-emulated venv clean perf-deps

$(VENV)/.stamp-base: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e .
	@touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-base
	$(PIP) install --quiet -e '.[test]'
	@touch $@

$(VENV)/.stamp-apt: Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing" >&2; \
	    (apt-get update -q >/dev/null || true); \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "The tests need these Debian packages:$$missing. Run as root: apt-get install -y$$missing" >&2; exit 1; \
	  fi; \
	fi
	@mkdir -p $(VENV) && touch $@

venv: $(VENV)/.stamp-base

demo: $(VENV)/.stamp-base
	$(VENV)/bin/edgelr demo

test: $(VENV)/.stamp-test $(VENV)/.stamp-apt
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(VENV)/.stamp-test $(VENV)/.stamp-apt
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

test-emulated: $(VENV)/.stamp-test $(VENV)/.stamp-apt
	@if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap binfmt-support >/dev/null; fi
	EDGELR_EMULATED=1 $(PY) -m pytest -m emulated $(PYTEST_ARGS)

# What the benchmark scripts in tests/perf need beyond the tests: sktime's bundled UCR data files
# (only the .ts files are read, so its dependencies are not installed).
perf-deps: $(VENV)/.stamp-test
	$(PIP) install --quiet --no-deps sktime==1.2.0

clean:
	rm -rf $(VENV) build *.egg-info
