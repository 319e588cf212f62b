# scorelab: `make train` and `make test` install on first use (into .venv) and then run.
# GPU machines: `make install TORCH="torch torchvision"` (or pre-install your CUDA build of torch in .venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Pinned for the dev/CI install: these wheels come from local disk on the project's machines.
TORCH ?= torch==2.14.1 torchvision==0.29.1
ARGS ?=

.PHONY: install train sample likelihood test test-all lint sweep bench throughput fid evaluation-bench mnist-features mnist-metric clean docs docs-serve

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

train: $(STAMP)  ## the default experiment: toy two-mode mixture on CPU (~1-2 min)
	$(PY) train.py $(ARGS)

SAMPLE_ARGS ?= model=oracle sampler=euler_maruyama
sample: $(STAMP)  ## exact-score samples of the default mixture; SAMPLE_ARGS="ckpt_path=.../last.ckpt" for a model
	$(PY) sample.py $(SAMPLE_ARGS) $(ARGS)

LIK_ARGS ?= model=oracle
likelihood: $(STAMP)  ## NLL of the exact toy score (nats); LIK_ARGS="ckpt_path=.../last.ckpt split=test" for a model
	$(PY) likelihood.py $(LIK_ARGS) $(ARGS)

TEST_WORKERS ?= 2
test: $(STAMP)  ## the CI test command (TEST_WORKERS=2 processes, pytest-xdist; TEST_WORKERS=0: one process)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-all: $(STAMP)  ## including the slow end-to-end checks
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

lint: $(STAMP)  ## ruff, and the layer contract of pyproject.toml (import-linter)
	$(VENV)/bin/ruff check src tests bench train.py sample.py fid.py likelihood.py docs/*.py
	$(VENV)/bin/lint-imports

sweep: $(STAMP)  ## 2 x 2 grid over the VP schedule; summary.md in the sweep folder
	$(PY) train.py -m sde.beta_min=0.05,0.1 sde.beta_max=10,20 $(ARGS)

bench: $(STAMP)  ## sampler baseline with the exact score
	$(PY) bench/samplers.py $(ARGS)

throughput: $(STAMP)  ## training images/s and peak memory of the image networks
	$(PY) bench/throughput.py $(ARGS)

mnist-features: $(STAMP)  ## train and cache the small MNIST classifier behind fd_mnist (a few CPU minutes, once)
	$(PY) -m scorelab.cli.mnist_features $(ARGS)

mnist-metric: $(STAMP)  ## fd_mnist of real, blurred and noise images (bench/mnist_metric.py)
	$(PY) bench/mnist_metric.py $(ARGS)

clean:
	rm -rf logs outputs multirun .pytest_cache site

DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

# Material's banner about MkDocs 2 is no warning of this site's.
DOCS_ENV := NO_MKDOCS_2_WARNING=1
docs: $(DOCS_STAMP)  ## the documentation site into site/ (mkdocs.yml; --strict: a broken link or reference fails)
	$(DOCS_ENV) $(VENV)/bin/mkdocs build --strict --site-dir site $(ARGS)

docs-serve: $(DOCS_STAMP)  ## the site at http://127.0.0.1:8000, rebuilt when docs/, conf/ or src/ change
	$(DOCS_ENV) $(VENV)/bin/mkdocs serve $(ARGS)

FID_ARGS ?=
fid: $(STAMP)  ## FID / KID: make fid FID_ARGS="samples=<folder|.npz> ref=<stats.npz|data name>" (or mode=ref data=...)
	$(PY) fid.py $(FID_ARGS) $(ARGS)

evaluation-bench: $(STAMP)  ## Inception feature throughput and the time of a 10k-sample FID (bench/evaluation.py)
	$(PY) bench/evaluation.py $(ARGS)
