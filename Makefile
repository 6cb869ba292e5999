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

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/taube serve

test: $(VENV)/.installed-test
	@# Independent DKIM verifiers for the signing tests: Perl's Mail::DKIM and opendkim-testmsg.
	@[ -x /usr/sbin/opendkim-testmsg ] && perl -MMail::DKIM::Verifier -e1 2>/dev/null \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		     libmail-dkim-perl opendkim-tools; }
	$(PY) -m pytest -q

# The engines' property tests with the long hypothesis profile (tests/conftest.py): FUZZ_EXAMPLES
# examples per test (default 10000), no per-test timeout; a failure prints its reproduce blob.
FUZZ_TESTS = tests/proto/test_fuzz_smtp.py tests/proto/test_fuzz_pop3.py
fuzz: $(VENV)/.installed-test
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -o timeout=0 --hypothesis-show-statistics $(FUZZ_TESTS)

bench: $(VENV)/.installed-test
	bash bench/install-peers.sh
	$(PY) bench/smtp_bench.py
	$(PY) bench/pop3_bench.py
	$(PY) bench/relay_bench.py

clean:
	rm -rf $(VENV) build src/*.egg-info
