# Every target builds its own virtualenv from nothing (python3 -m venv + pip).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: build demo demo-nodes chat test lint typecheck unit processes clean \
	bench bench-quick redis-server dnsmasq chromium node-peer

# The editable install itself compiles nothing (SMARTROUTE_PURE=1); $(COMPILED) then compiles
# the core modules that setup.py lists, in place (next to their .py files, git-ignored), with
# the mypyc of the dev extra. README, "Building".
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	SMARTROUTE_PURE=1 $(BIN)/pip install --quiet -e '.[test,dev,metrics,chat]'
	touch $(STAMP)

# One stamp per kind of build, so that switching SMARTROUTE_PURE on or off builds again.
BUILD_KIND := $(if $(filter-out 0,$(SMARTROUTE_PURE)),pure,compiled)
COMPILED := $(VENV)/.built-$(BUILD_KIND)

## build: compile the core modules again (after an edit); SMARTROUTE_PURE=1 removes them
build: $(COMPILED)

# Any source of the package may change what the compiled modules see, so any edit rebuilds
# (gcc skips the C files that came out the same). The extensions are touched afterwards: they
# now stand for the sources as they are (smartroute/_compiled.py does not load an extension
# older than its source).
$(COMPILED): $(STAMP) setup.py $(wildcard smartroute/*.py)
	rm -f smartroute/*.so $(VENV)/.built-*
	$(BIN)/python setup.py --quiet build_ext --inplace >$(VENV)/build.log 2>&1 \
		|| { cat $(VENV)/build.log; exit 1; }
	if ls smartroute/*.so >/dev/null 2>&1; then touch smartroute/*.so; fi
	$(BIN)/smartroute --version
	touch $(COMPILED)

## demo: three chat gateways on loopback (mDNS on 127.0.0.1) and users chatting across them
demo: $(COMPILED)
	$(BIN)/python -m examples.chat_gateway.demo

## demo-nodes: three nodes on loopback: seeds, every receive mode, request/reply, a node dying
demo-nodes: $(COMPILED)
	$(BIN)/python examples/three_nodes.py

## chat: one chat gateway on 127.0.0.1:7070 (mDNS on loopback): the client or nc there, a browser
## at http://127.0.0.1:8070/
CHAT_PORT ?= 7070
CHAT_WS_PORT ?= 8070
chat: $(COMPILED)
	$(BIN)/python examples/chat_gateway/server.py --host 127.0.0.1 --port $(CHAT_PORT) \
		--ws-port $(CHAT_WS_PORT) --interface 127.0.0.1 --log-level INFO

# The pure build's share of `make test`: see PURE_TESTS below.
PURE_TESTS ?= -m "not lan"

## test: lint, types, the whole suite on the compiled build, then on the pure one (PURE_TESTS)
## (SMARTROUTE_PURE=1 make test: nothing compiled, the whole suite on the pure build)
test: lint typecheck $(COMPILED) dnsmasq chromium node-peer
ifeq ($(filter-out 0,$(SMARTROUTE_PURE)),)
	@$(BIN)/python -c 'import smartroute, sys; print("tests on:", smartroute.build); \
		sys.exit(0 if smartroute.compiled else "the compiled build is not in use")'
	$(BIN)/python -m pytest
	SMARTROUTE_PURE=1 $(BIN)/python -m pytest $(PURE_TESTS)
else
	$(BIN)/python -m pytest
endif

# The DNS discovery tests (tests/test_lan_dns.py) run a real DNS server: dnsmasq, installed
# from the distribution when we are root, as dnsmasq-base (the binary alone: the dnsmasq
# package would also install and start a system DNS service). Otherwise, or if the install
# fails, those tests are skipped and say why.
dnsmasq:
	@if command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends dnsmasq-base) \
		|| echo "could not install dnsmasq-base: the DNS discovery tests will be skipped"; \
	else echo "dnsmasq missing and not root: the DNS discovery tests will be skipped"; fi

# The chat page's browser test (tests/test_chat_browser.py) drives headless Chromium through
# chromedriver, both from the distribution (~12 s here, lists already fetched; ~100 MB):
# installed when we are root, otherwise that test is skipped and says why.
chromium:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium chromium-driver) \
		|| echo "could not install chromium: the browser test will be skipped"; \
	else echo "chromium or chromedriver missing and not root: the browser test will be skipped"; fi

# The Node.js peer (examples/node_peer, tests/test_node_peer.py) needs its npm packages:
# zeromq (prebuilt binaries inside the package, nothing downloaded at install) and
# @msgpack/msgpack, pinned by package-lock.json. About 2 s (4 packages, 42 MB). Without node
# and npm, or if the install fails, those tests are skipped and say why.
node-peer:
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
		(cd examples/node_peer && npm ci --no-audit --no-fund) \
		|| echo "npm ci failed in examples/node_peer: the Node.js peer tests will be skipped"; \
	else echo "node or npm missing: the Node.js peer tests will be skipped"; fi

lint: $(STAMP)
	$(BIN)/ruff check smartroute tests examples bench

typecheck: $(STAMP)
	$(BIN)/mypy smartroute

## unit: only the fast tests of the pure core (no processes)
unit: $(COMPILED)
	$(BIN)/python -m pytest -m "not processes"

$(BENCH_STAMP): $(COMPILED) pyproject.toml
	SMARTROUTE_PURE=1 $(BIN)/pip install --quiet -e '.[test,dev,metrics,chat,bench]'
	touch $(BENCH_STAMP)

# The Redis baseline needs redis-server: installed from the distribution when we are root;
# otherwise bench/run.py skips the Redis rows and says why in the report.
redis-server:
	@if command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; \
	else echo "redis-server missing and not root: the Redis baselines will be skipped"; fi

## bench: the whole benchmark suite (< 10 min): bench/results/latest.json, bench/REPORT.md
bench: $(BENCH_STAMP) redis-server
	$(BIN)/python bench/run.py

## bench-quick: the same, fewer messages and runs (< 2 min)
bench-quick: $(BENCH_STAMP) redis-server
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis build smartroute/*.so
