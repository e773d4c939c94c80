# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install (CPU pins) with the extras the README's commands use, answer a question offline
#   make test   - the same, plus the test extra, then the gate (make check), then the test suite
#   make check  - the gate alone: ruff (rules in pyproject.toml), mypy on agent/ tools/ segmenter/ evals/,
#                 and pylint's duplicate-code check (no block of 6+ equal lines)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the demo's chest X-ray ships in examples/ (CC BY, attribution in examples/README.md): the same demo on every machine
DEMO_IMAGE ?= examples/chest_xray_pa_radiopaedia_9171.jpg
DEMO_QUESTION ?= Is the heart enlarged?

# the core plus [ui] (medsam3-agent ui), [serve] (serve-segmenter) and [eval] (eval, bench)
$(VENV)/.installed-app: pyproject.toml constraints/cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[ui,serve,eval]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-app
	$(BIN)/pip install -q -c constraints/cpu.txt -e '.[test]'
	touch $@

install: $(VENV)/.installed-app

demo: install
	$(BIN)/medsam3-agent run "$(DEMO_IMAGE)" "$(DEMO_QUESTION)" --out runs/demo
	@echo "wrote runs/demo (overlay.png, masks, result.json)"

# gradio writes agent/ui/*.pyi when it imports the UI; mypy would read that copy instead of the module
check: $(VENV)/.installed-test
	$(BIN)/ruff check .
	rm -f agent/ui/*.pyi
	$(BIN)/mypy
	$(BIN)/pylint --disable=all --enable=duplicate-code --score=n agent tools segmenter evals scripts tests

test: check
	bash scripts/install_browser.sh  # Debian's Chromium for the UI's browser test; skipped there if it cannot be had
	$(BIN)/python -m pytest -q

.PHONY: install demo check test
