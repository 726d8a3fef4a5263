# Quickstart: `make demo` (the main job) and `make test` (the whole suite). Both create
# .venv from the pinned requirements when it is missing or older than them.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.evit_ros_installed
SHARED ?= ../shared

.PHONY: venv test lint demo demo-weights bench clean

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

# The main job: a short bag replayed through the real segmentation_node over DDS; prints
# latency / throughput / mIoU and where the report went (OUT). The frames: the CamVid val set
# when it is in the cache (`evit-ros data fetch camvid` or `data import camvid DIR`), else a
# generated street scene; or IMAGES=dir [LABELS=dir LABEL_FORMAT=camvid|cityscapes|trainid],
# CAMVID=dir (holding val/ and valannot/), SAMPLE=1 (the generated scene), or BAG=bag
# TOPIC=topic. BACKEND=auto by default.
# The b0-cityscapes weights come from EVIT_ROS_WEIGHTS_DIR or the cache; demo-weights checks
# that first, with the shell alone, so a machine without them hears it before any install.
DEMO_WEIGHTS = efficientvit_seg_b0_cityscapes.pt
DEMO_ARGS = $(if $(BAG),--bag "$(BAG)" --topic "$(TOPIC)") $(if $(IMAGES),--images "$(IMAGES)") \
	$(if $(LABELS),--labels "$(LABELS)" --label-format "$(LABEL_FORMAT)") \
	$(if $(FRAMES),--frames $(FRAMES)) $(if $(OUT),--out "$(OUT)") \
	$(if $(BACKEND),--backend "$(BACKEND)") $(if $(CAMVID),--camvid "$(CAMVID)") \
	$(if $(SAMPLE),--sample)

demo-weights:
	@cache="$${EVIT_ROS_CACHE:-$$HOME/.cache/evit_ros}/weights"; \
	for dir in "$$EVIT_ROS_WEIGHTS_DIR" "$$cache"; do \
		if [ -n "$$dir" ] && [ -f "$$dir/$(DEMO_WEIGHTS)" ]; then exit 0; fi; \
	done; \
	echo "make demo: no $(DEMO_WEIGHTS) in $${EVIT_ROS_WEIGHTS_DIR:+$$EVIT_ROS_WEIGHTS_DIR, }$$cache." \
		"Get it first: \`make venv && .venv/bin/evit-ros weights fetch b0-cityscapes\`" \
		"(downloads it), or \`make venv && .venv/bin/evit-ros weights import b0-cityscapes" \
		"/path/to/$(DEMO_WEIGHTS)\`, or set EVIT_ROS_WEIGHTS_DIR to the folder that holds it" >&2; \
	exit 1

demo: demo-weights $(STAMP)
	$(VENV)/bin/evit-ros demo $(strip $(DEMO_ARGS))
