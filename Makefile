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
	$(BIN)/python -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=600 --timeout=900 --durations=25

# Build the website, then check it (book/check_site.py): no missing local file (MathJax's
# own components and fonts included), no warning in an output, an image on every chapter,
# no lint pragma in code. Then, where Debian's chromium is installed, book/check_widths.py
# opens every chapter page at 1440x900 and fails if a code block is wider than its box.
book: install export
	$(BIN)/jupyter-book build . -W -n --keep-going
	$(BIN)/python book/check_site.py _build/html
	$(BIN)/python book/check_widths.py _build/html

clean:
	rm -rf _build .pytest_cache
