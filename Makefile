# Set-up and entry points. `make run` and `make test` each install what they need.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TMS    := $(VENV)/bin/tms
STORE  ?= runs
EXPERIMENT ?= intro
# two test workers; the tests marked serial share one of them (README, "Tests")
PYTEST := $(PY) -m pytest -q -n 2 --dist loadgroup

.PHONY: install run test test-fast wheel bench browser slurm clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# The main job: a small real sweep, then its analysis.
run: install
	$(TMS) sweep experiment=$(EXPERIMENT) debug=smoke store=$(STORE) wandb.mode=offline
	$(TMS) analyze $(STORE)/$(EXPERIMENT)-smoke

# Headless Chromium for the report test (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the report browser test will be skipped"; }

# Debian's SLURM and munge for the SLURM test (it starts a one-node cluster and stops it again).
slurm:
	@{ command -v slurmctld && command -v slurmd && command -v munged; } >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
	  || echo "warning: could not install slurm-wlm and munge; the SLURM test will be skipped"; }

test: install browser slurm
	$(PYTEST) tests

# While developing: everything but the tests marked slow (real sweeps on Ray, the wheel, acceptance).
test-fast: install
	$(PYTEST) -m "not slow" tests

# The installable wheel (config tree included): dist/tms_sweeps-<version>-py3-none-any.whl
wheel: install
	$(PY) -m pip wheel -q --no-deps --no-build-isolation -w dist .

bench: install
	$(PY) -m benchmarks.throughput --json
	$(PY) -m benchmarks.sweep_overhead --json
	$(PY) -m benchmarks.embedded_ray --json
	$(PY) -m benchmarks.analysis_scale
	$(PY) -m benchmarks.cli_latency --json
	$(PY) -m benchmarks.plan_scale --json

clean:
	rm -rf $(VENV) runs dist .pytest_cache
