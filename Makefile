# Single entry point. `make demo` and `make test` each set up the virtual
# environment first (scripts/bootstrap.sh: fast when already done).
VENV ?= .venv
PY := $(VENV)/bin/python
export VENV

.PHONY: setup demo test lint typecheck pytest bench-synthetic bench-vqconv bench-suite \
	bench-accuracy bench-batch bench-scaling clean

setup:
	@bash scripts/bootstrap.sh

# The main job: VQ-GNN and full-graph GCN side by side on a synthetic graph (no files).
DEMO_DATASET ?= synthetic:n=100000,deg=20,signal=0.3
DEMO_ARGS ?= --method vq,full --conv gcn --epochs 50 --batch-size 2048 --num-codewords 512

demo: setup
	$(PY) -m vqgnn train --dataset $(DEMO_DATASET) $(DEMO_ARGS)

lint: setup
	$(PY) -m ruff check .

typecheck: setup
	$(PY) -m mypy vqgnn

pytest: setup
	$(PY) -m pytest -q

test: setup
	$(PY) -m ruff check .
	$(PY) -m mypy vqgnn
	$(PY) -m pytest -q

bench-synthetic: setup
	$(PY) benchmarks/synthetic_speed.py --n 1000000 --deg 20

bench-vqconv: setup
	$(PY) benchmarks/vqconv_step.py

# The comparison suite: VQ-GNN, full-graph, GraphSAGE, Cluster-GCN, GraphSAINT on five graphs.
bench-suite: setup
	$(PY) benchmarks/grid.py --preset suite

bench-accuracy: setup
	$(PY) benchmarks/grid.py --preset accuracy

bench-batch: setup
	$(PY) benchmarks/grid.py --preset batch

bench-scaling: setup
	$(PY) benchmarks/scaling.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
