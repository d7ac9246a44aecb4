# make demo   -> set up .venv, make a small synthetic EM dataset, train and evaluate the 2D template on it
# make test   -> set up .venv and run the test suite
# make bench  -> benchmarks (tests/benchmarks/), one JSON line each
# make test-jax -> set up .venv-jax (JAX backend, no TensorFlow) and run the JAX subset below
# make test-torch -> set up .venv-torch (PyTorch backend, CPU, no TensorFlow) and run the whole suite on it
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

TORCH_VENV := .venv-torch
TORCH_PY := $(TORCH_VENV)/bin/python
TORCH_STAMP := $(TORCH_VENV)/.installed

JAX_VENV := .venv-jax
JAX_PY := $(JAX_VENV)/bin/python
JAX_STAMP := $(JAX_VENV)/.installed
# The JAX backend's subset (CI): networks, losses, metrics, training with resume, tiled inference, one
# end-to-end template run. `make test-jax JAX_TESTS=tests` runs the whole suite on JAX.
JAX_TESTS ?= tests/test_networks.py tests/test_losses.py tests/test_metrics.py tests/test_training.py \
	tests/test_inference.py tests/test_generators.py \
	tests/test_reliability.py::test_kill_during_an_epoch_then_diverge_then_resume \
	tests/test_reliability.py::test_resumed_run_counts_the_time_already_trained \
	tests/test_template.py::test_run_folder_has_every_output

.PHONY: setup setup-jax setup-torch demo test test-jax test-torch bench clean

setup: $(STAMP)

$(STAMP): env/requirements-base.txt env/requirements.txt env/requirements-dev.txt env/requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r env/requirements-dev.txt
	touch $(STAMP)

setup-jax: $(JAX_STAMP)
setup-torch: $(TORCH_STAMP)

# .venv-jax and .venv-torch: env/requirements-<backend>.txt (no TensorFlow) and the test packages
$(JAX_STAMP) $(TORCH_STAMP): .venv-%/.installed: env/requirements-base.txt env/requirements-%.txt env/requirements-test.txt
	test -x .venv-$*/bin/python || $(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install --quiet --upgrade pip
	.venv-$*/bin/python -m pip install --quiet -r env/requirements-$*.txt -r env/requirements-test.txt
	touch $@

demo: $(STAMP)
	$(PY) -m lib.data.synthetic demo_data/em2d --n-train 16 --n-test 4 --size 256 256 --seed 0
	$(PY) templates/template.py . demo_data/em2d demo_jobs --id demo --rid 0 --gpu cpu --overwrite \
		--set train.epochs=25 --set train.patience=25 --set data.replicate=4 --set data.crop_shape=[128,128] \
		--set post.z_filter=false  # the demo's test images are independent, not slices of one stack
	@echo "Demo finished: results in demo_jobs/demo_0/ (metrics.json, charts/*.png, predictions/), summary in demo_jobs/summary.csv"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests --ignore=tests/benchmarks  # two workers, one core each; loadgroup: a file whose fixtures run templates stays on one worker

test-jax: $(JAX_STAMP)
	KERAS_BACKEND=jax $(JAX_PY) -m pytest -q -n 2 --dist loadgroup $(JAX_TESTS)

test-torch: $(TORCH_STAMP)
	KERAS_BACKEND=torch $(TORCH_PY) -m pytest -q -n 2 --dist loadgroup tests --ignore=tests/benchmarks

bench: $(STAMP)
	$(PY) -m pytest -q -s -o python_files='bench_*.py' tests/benchmarks

clean:
	rm -rf demo_data demo_jobs
