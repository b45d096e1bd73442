# The commands of README.md. Each builds .venv (the pinned requirements, then the suite editable) when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXPERIMENT ?= benchmark/config/experiments/cifar100_b0inc20_cpu.yaml
DATA ?=
GPUS ?=
WORKERS ?=
DATA_ARG := $(if $(DATA),--data-root $(DATA),)
DEVICE_ARG := $(if $(GPUS),--gpus $(GPUS),)$(if $(WORKERS), --workers $(WORKERS),)

.PHONY: bench test plan schema venv clean-venv check-device

# The pinned requirements first, then the suite itself, editable and without dependencies, so
# the pins stay the only source of versions (and `cil-bench` is on the venv's PATH).
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

bench: venv
	$(PY) run_all.py run $(EXPERIMENT) $(DATA_ARG) $(DEVICE_ARG)

plan: venv
	$(PY) run_all.py plan $(EXPERIMENT)

# Two pytest workers (pytest-xdist), a test file each at a time (--dist loadfile: a file's tests
# share its fixtures and, for the Ray and SLURM tests, its cluster); TEST_WORKERS=0 runs them in one
# process. Many tests wait on subprocesses, so two workers gain even on two cores.
TEST_WORKERS ?= 2
test: venv
	$(if $(DATA),CIL_DATA_ROOT=$(DATA) ,)$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# Before a grid on a GPU machine: steps, parity, a tiny grid, packing and projected hours (sized for
# about 8 minutes on one GPU, not yet timed on one; python -m benchmark.tools.check --help).
# CHECK_ARGS=--quick is the CPU smoke size.
CHECK_ARGS ?=
check-device: venv
	$(if $(DATA),CIL_DATA_ROOT=$(DATA) ,)$(PY) -m benchmark.tools.check $(CHECK_ARGS)

# The experiment file's JSON schema for editors; tests/test_schema.py fails when it is stale.
schema: venv
	$(PY) -m benchmark.config --schema > benchmark/config/schema.json

clean-venv:
	rm -rf $(VENV)
