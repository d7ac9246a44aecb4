# make demo   -> set up .venv, make a small synthetic EM dataset, train and evaluate the 2D template on it
# make test   -> set up .venv and run the test suite
# make bench  -> benchmarks (tests/benchmarks/), one JSON line each
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): env/requirements.txt env/requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r env/requirements-dev.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lib.synthetic demo_data/em2d --n-train 16 --n-test 4 --size 256 256 --seed 0
	$(PY) templates/template.py . demo_data/em2d demo_jobs --id demo --rid 0 --gpu cpu --overwrite \
		--set train.epochs=25 --set train.patience=25 --set data.replicate=4 --set data.crop_shape=[128,128] \
		--set post.z_filter=false  # the demo's test images are independent, not slices of one stack
	@echo "Demo finished: results in demo_jobs/demo_0/ (metrics.json, charts/*.png, predictions/), summary in demo_jobs/summary.csv"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests --ignore=tests/benchmarks  # two workers: most tests wait on a subprocess starting Keras

bench: $(STAMP)
	$(PY) -m pytest -q -s -o python_files='bench_*.py' tests/benchmarks

clean:
	rm -rf demo_data demo_jobs
