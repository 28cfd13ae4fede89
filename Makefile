# The README's commands. Each one creates (or reuses) the virtual environment in .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bevnb-installed

.PHONY: notebooks test lab lint clean weights

## notebooks: execute every chapter headlessly; executed copies and artifacts go to build/
notebooks: $(STAMP)
	$(BIN)/python -m bevnb.chapters --out build/notebooks

## test: unit tests, then every chapter executed under its time budget
test: $(STAMP)
	$(BIN)/python -m pytest

## lab: open the chapters in JupyterLab
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

## weights: train the shipped weights on the synthetic street (resumable: run it again after a stop), ship and score them
weights: $(STAMP)
	$(BIN)/python training/train.py --out build/training
	mkdir -p data/training && cp build/training/weights.pth build/training/log.jsonl data/training/
	$(BIN)/python training/evaluate.py --weights data/training/weights.pth

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf build

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@
