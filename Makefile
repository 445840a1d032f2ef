# sweeper: two commands on a fresh machine.
#   make sweep STUDY=ctc_baseline   set up .venv on first use, then run the study
#   make test                       set up .venv on first use, then run the tests
#
# Torch: without an NVIDIA GPU the CPU build is pinned (TORCH=torch==2.13.0);
# with one, the registry's default (CUDA) build. Override with TORCH=... and
# TORCH_INDEX=URL (e.g. https://download.pytorch.org/whl/cpu). A torch already
# importable in the venv is kept (VENV_FLAGS=--system-site-packages reuses the
# system's).

PYTHON      ?= python3
VENV        ?= .venv
VENV_FLAGS  ?=
HAS_GPU     := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH       ?= $(if $(HAS_GPU),torch,torch==2.13.0)
TORCH_INDEX ?=
PY          := $(VENV)/bin/python
SWEEPER     := $(VENV)/bin/sweeper
STAMP       := $(VENV)/.installed

STUDY   ?= ctc_baseline
TRIALS  ?=
STORAGE ?=
WORKERS ?=
GPUS    ?=
DASK    ?=
SEEDS   ?=
CONFIG  ?= results/$(STUDY)/best.yaml
ARGS    ?=

RUN_FLAGS = $(if $(TRIALS),--trials $(TRIALS)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(GPUS),--gpus $(GPUS)) \
            $(if $(DASK),--dask $(DASK)) \
            $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)

.PHONY: setup sweep test test-all lint report export status train dashboard ablate bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "keeping installed torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
		echo "installing $(TORCH) (first set-up takes a minute or two)"; \
		$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

sweep: $(STAMP)
	$(SWEEPER) run $(STUDY) $(RUN_FLAGS)

status: $(STAMP)
	$(SWEEPER) status $(STUDY) $(if $(STORAGE),--storage $(STORAGE))

report: $(STAMP)
	$(SWEEPER) report $(STUDY) $(if $(STORAGE),--storage $(STORAGE))

export: $(STAMP)
	$(SWEEPER) export $(STUDY) $(if $(STORAGE),--storage $(STORAGE))

train: $(STAMP)
	$(SWEEPER) train $(CONFIG) $(ARGS)

ablate: $(STAMP)
	$(SWEEPER) ablate $(STUDY) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(WORKERS),--workers $(WORKERS)) $(if $(DASK),--dask $(DASK)) $(if $(STORAGE),--storage $(STORAGE))

dashboard: $(STAMP)
	$(SWEEPER) dashboard $(STUDY) $(if $(STORAGE),--storage $(STORAGE))

test: $(STAMP)
	$(PY) -m pytest -m "not slow" $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check sweeper tests bench

bench: $(STAMP)
	$(PY) bench/overhead.py
	$(PY) bench/monitor_overhead.py
	$(PY) bench/health_zoo.py
	$(PY) bench/health_savings.py
	$(PY) bench/search_efficiency.py
	$(PY) bench/report_speed.py
	$(PY) bench/workers.py
	$(PY) bench/pg_workers.py
	$(PY) bench/ablation_workers.py --dask
	$(PY) bench/fuzz.py --examples 2000 --seed 11

clean:
	rm -rf $(VENV) .pytest_cache
