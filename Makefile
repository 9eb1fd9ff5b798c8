# t5mini: the book and the package. Two commands do all set-up on a fresh machine:
#   make book   create .venv, install, export, build the website into _build/html
#   make test   the same install, then every check (make check, pytest on tests/ and chapters/)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install export check lint test book clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

export: install
	$(BIN)/python book/export.py

# The fast subset: chapters <-> t5mini <-> .ipynb in step, lint and format.
check: install
	$(BIN)/python book/export.py --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install
	$(MAKE) --no-print-directory check
	$(BIN)/python -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=600 --timeout=900

book: install export
	rm -rf book/_static/mathjax
	mkdir -p book/_static
	cp -r "$$($(BIN)/python -c 'import jupyter_server_mathjax, pathlib; print(pathlib.Path(jupyter_server_mathjax.__file__).parent / "static")')" book/_static/mathjax
	$(BIN)/jupyter-book build . -W -n --keep-going

clean:
	rm -rf _build book/_static/mathjax .pytest_cache
