# kdflow: `make run` sets up and runs the default study; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT_PREFECT ?= 4200
PORT_MLFLOW ?= 5000
# Telemetry off; Prefect state and caches live inside the project.
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export PREFECT_HOME := $(CURDIR)/.kdflow/prefect
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install run test gpu-check serve ui clean

install: $(VENV)/.installed

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(PREFECT_HOME)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, prefect, mlflow, dvc, polars, kdlib.config" 
	@test -d .dvc || $(BIN)/dvc init -q $$(git rev-parse --git-dir >/dev/null 2>&1 || echo --no-scm)
	touch $@

$(PREFECT_HOME):
	mkdir -p $@

# The whole study is validated first (exit 2 naming the field, nothing run or removed);
# dvc repro's own first stage, check_study, validates it again for a bare `dvc repro`.
run: install | $(PREFECT_HOME)
	$(BIN)/python -m tasks.check_study --validate-only
	$(BIN)/dvc repro
	@echo "results table: results/summary.md (also results/summary.csv, results/summary.json)"

# Two workers, one file each at a time (module fixtures build their project once), one torch
# thread per test: the 2-core machine runs the suite in about half the serial time.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# On a GPU machine, <= 8 minutes: CUDA tests, kernels, student throughput, concurrent students in one
# JSON ($OUT/gpu_check.json when OUT is set, else bench/results/gpu_check_cuda.json).
# GPU_CHECK_ARGS=--dry-run checks the same code paths on a CPU in < 3 minutes.
gpu-check: install
	$(BIN)/python bench/gpu_check.py $(GPU_CHECK_ARGS)

# A local Prefect server (SQLite in .kdflow/prefect) and a process serving the deployments.
# Ctrl-C or SIGTERM stops both within 10 s, the deployment runner first (flows/servers.py).
serve: install | $(PREFECT_HOME)
	@echo "Prefect UI: http://127.0.0.1:$(PORT_PREFECT)  (Ctrl-C stops both)"
	@echo "then: PREFECT_API_URL=http://127.0.0.1:$(PORT_PREFECT)/api $(BIN)/prefect deployment run 'kd-pipeline/default'"
	exec $(BIN)/python -m flows.servers prefect --port $(PORT_PREFECT)

# The MLflow UI on the project's store; Ctrl-C or SIGTERM stops it within 10 s.
ui: install
	exec $(BIN)/python -m flows.servers mlflow --port $(PORT_MLFLOW) --store sqlite:///$(CURDIR)/mlflow.db \
		--artifacts $(CURDIR)/mlruns

clean:
	rm -rf artifacts results .kdflow mlflow.db mlruns
