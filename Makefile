# taube: the two commands a user needs are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: run test fuzz bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

# uvloop (the `fast` extra): the server runs on it when it is installed (src/taube/loop.py).
$(VENV)/.installed-fast: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[fast]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,bench,fast]'
	touch $@

run: $(VENV)/.installed-fast
	$(VENV)/bin/taube serve

test: $(VENV)/.installed-test
	@# Independent DKIM verifiers for the signing tests: Perl's Mail::DKIM and opendkim-testmsg.
	@[ -x /usr/sbin/opendkim-testmsg ] && perl -MMail::DKIM::Verifier -e1 2>/dev/null \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		     libmail-dkim-perl opendkim-tools; }
	@# The whole suite on the standard library's loop, then the end-to-end tests (real `taube
	@# serve` processes) again on uvloop: the server must behave the same on both.
	TAUBE_EVENT_LOOP=asyncio $(PY) -m pytest -q
	TAUBE_EVENT_LOOP=uvloop $(PY) -m pytest -q tests/e2e

# The engines' property tests with the long hypothesis profile (tests/conftest.py): FUZZ_EXAMPLES
# examples per test (default 10000), no per-test timeout; a failure prints its reproduce blob.
FUZZ_TESTS = tests/proto/test_fuzz_smtp.py tests/proto/test_fuzz_pop3.py
fuzz: $(VENV)/.installed-test
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -o timeout=0 --hypothesis-show-statistics $(FUZZ_TESTS)

# Each driver prints its table and exits 1 on a lost, torn or duplicated message; all four run
# even when one fails, and make fails if any did. BENCH_ARGS, e.g. --quick or --profile.
bench: $(VENV)/.installed-test
	bash bench/install-peers.sh
	status=0; \
	for driver in smtp_bench relay_bench pop3_bench memory_bench; do \
		$(PY) bench/$$driver.py $(BENCH_ARGS) || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) build src/*.egg-info
