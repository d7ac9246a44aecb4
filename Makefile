# make demo   -> set up .venv, train and evaluate the 2D template on real SEM (examples/axondeepseg_sem), segment an image with predict.py
# make test   -> set up .venv and run the test suite
# make bench  -> benchmarks (tests/benchmarks/), one JSON line each
# make test-jax -> set up .venv-jax (JAX backend, no TensorFlow) and run the JAX subset below
# make test-torch -> set up .venv-torch (PyTorch backend, CPU, no TensorFlow) and run the whole suite on it
# make napari -> set up .venv-napari (napari, PyQt6 and the plugin); make test-napari runs its tests headless
# make peers -> .venv-biapy (BiaPy 3.7.1) and .venv-nnunet (nnU-Net 2.8.1) beside the project, for the side-by-side
#               runs (tests/benchmarks/peers/side_by_side.py); not part of setup, the tests or CI
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

TORCH_VENV := .venv-torch
TORCH_PY := $(TORCH_VENV)/bin/python
TORCH_STAMP := $(TORCH_VENV)/.installed

NAPARI_VENV := .venv-napari
NAPARI_PY := $(NAPARI_VENV)/bin/python
NAPARI_STAMP := $(NAPARI_VENV)/.installed

JAX_VENV := .venv-jax
JAX_PY := $(JAX_VENV)/bin/python
JAX_STAMP := $(JAX_VENV)/.installed
# The JAX backend's subset (CI): networks, losses (with unannotated pixels too), metrics, training with resume,
# tiled inference, one end-to-end template run. `make test-jax JAX_TESTS=tests` runs the whole suite on JAX.
JAX_TESTS ?= tests/test_networks.py tests/test_losses.py tests/test_metrics.py tests/test_training.py \
	tests/test_inference.py tests/test_generators.py \
	tests/test_reliability.py::test_kill_during_an_epoch_then_diverge_then_resume \
	tests/test_reliability.py::test_resumed_run_counts_the_time_already_trained \
	tests/test_template.py::test_run_folder_has_every_output \
	tests/test_instances.py::test_loss_of_the_channels_equals_its_numpy_reference \
	tests/test_instances.py::test_template_trains_an_instance_model_and_writes_objects \
	tests/test_ignore.py::test_binary_losses_with_unannotated_pixels_equal_those_of_the_annotated_pixels_alone \
	tests/test_ignore.py::test_multiclass_and_instance_losses_leave_unannotated_pixels_out \
	tests/test_ignore.py::test_iou_metrics_count_annotated_pixels_only

.PHONY: setup setup-jax setup-torch demo test test-jax test-torch bench clean napari test-napari peers

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
	$(PY) templates/template.py . examples/axondeepseg_sem demo_jobs --id demo --rid 0 --gpu cpu --overwrite \
		--set model.classes=3 --set train.epochs=35 --set train.patience=35 --set data.replicate=4 \
		--set data.crop_shape=[128,128] --set post.z_filter=false  # 0 background, 1 myelin, 2 axon; independent test images
	$(PY) templates/predict.py . examples/axondeepseg_sem/test/x/sub-rat3_sample-data9_SEM_y0002_x0006.tif \
		demo_jobs/demo_predict.tif --model demo_jobs/demo_0 --gpu cpu --overwrite
	$(PY) examples/axondeepseg_sem/draw_outlines.py examples/axondeepseg_sem/test/x/sub-rat3_sample-data9_SEM_y0002_x0006.tif \
		demo_jobs/demo_predict.tif demo_jobs/demo_outlines.png --box 0 0 448 448
	@echo "Demo finished: run in demo_jobs/demo_0/ (metrics.json, charts/*.png, predictions/), summary in demo_jobs/summary.csv;"
	@echo "predict.py's segmentation of a test image in demo_jobs/demo_predict.tif (+ _prob.tif), drawn in demo_jobs/demo_outlines.png"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup tests --ignore=tests/benchmarks --ignore=tests/napari  # two workers, one core each; loadgroup: a file whose fixtures run templates stays on one worker

test-jax: $(JAX_STAMP)
	KERAS_BACKEND=jax $(JAX_PY) -m pytest -q -n 2 --dist loadgroup $(JAX_TESTS)

test-torch: $(TORCH_STAMP)
	KERAS_BACKEND=torch $(TORCH_PY) -m pytest -q -n 2 --dist loadgroup tests --ignore=tests/benchmarks --ignore=tests/napari

napari: $(NAPARI_STAMP)

$(NAPARI_STAMP): env/requirements-base.txt env/requirements.txt env/requirements-dev.txt env/requirements-test.txt \
		env/requirements-napari.txt pyproject.toml
	test -x $(NAPARI_PY) || $(PYTHON) -m venv $(NAPARI_VENV)
	$(NAPARI_PY) -m pip install --quiet --upgrade pip
	$(NAPARI_PY) -m pip install --quiet -r env/requirements-napari.txt
	$(NAPARI_PY) -m pip install --quiet --no-deps -e .
	touch $(NAPARI_STAMP)

# The plugin in a real napari viewer on a virtual screen (Xvfb; napari draws with OpenGL, which Qt's offscreen
# platform lacks): reader, Segment, Train. Debian: apt install xvfb xauth libgl1-mesa-dri libxkbcommon-x11-0 libxcb-cursor0
test-napari: $(NAPARI_STAMP)
	xvfb-run -a $(NAPARI_PY) -m pytest -q tests/napari

peers: $(STAMP)
	bash tests/benchmarks/peers/setup.sh

bench: $(STAMP)
	$(PY) -m pytest -q -s -o python_files='bench_*.py' tests/benchmarks

clean:
	rm -rf demo_data demo_jobs
