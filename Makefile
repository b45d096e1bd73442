# The two commands of README.md. Each builds .venv from requirements.txt when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXPERIMENT ?= benchmark/configs/cifar100_b0inc20_cpu.yaml
DATA ?=
GPUS ?=
WORKERS ?=
DATA_ARG := $(if $(DATA),--data-root $(DATA),)
DEVICE_ARG := $(if $(GPUS),--gpus $(GPUS),)$(if $(WORKERS), --workers $(WORKERS),)

.PHONY: bench test plan venv clean-venv

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

bench: venv
	$(PY) run_all.py run $(EXPERIMENT) $(DATA_ARG) $(DEVICE_ARG)

plan: venv
	$(PY) run_all.py plan $(EXPERIMENT)

test: venv
	$(if $(DATA),CIL_DATA_ROOT=$(DATA) ,)$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
