# Quickstart: `make demo` (the main job) and `make test` (the whole suite). Both create
# .venv from the pinned requirements when it is missing or older than them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.evit_ros_installed
SHARED ?= ../shared

.PHONY: venv test lint demo bench clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -rs test

lint: $(STAMP)
	$(PY) -m pytest -q test/test_flake8.py test/test_pep257.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# The main job: a short bag (a generated street scene, or IMAGES=dir [LABELS=dir
# LABEL_FORMAT=camvid|cityscapes|trainid], or BAG=bag TOPIC=topic) replayed through the real
# segmentation_node over DDS; prints latency / throughput and where the report went (OUT).
# The b0-cityscapes weights come from EVIT_ROS_WEIGHTS_DIR, the cache, or are fetched.
DEMO_ARGS = $(if $(BAG),--bag "$(BAG)" --topic "$(TOPIC)") $(if $(IMAGES),--images "$(IMAGES)") \
	$(if $(LABELS),--labels "$(LABELS)" --label-format "$(LABEL_FORMAT)") \
	$(if $(FRAMES),--frames $(FRAMES)) $(if $(OUT),--out "$(OUT)")

demo: $(STAMP)
	$(VENV)/bin/evit-ros demo $(strip $(DEMO_ARGS))
