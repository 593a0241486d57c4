# Two commands from a fresh clone:
#   make book   build the static site into _build/html (executes every notebook)
#   make test   unit tests, every notebook as a Colab reader runs it, the book with warnings as errors
#   make check  the fast loop: the in-process unit tests only (tests/unit/)
# Both create the virtual environment .venv by themselves (the first time, ~5 minutes:
# Horovod 0.28.1 is compiled from source with a two-line C++17 patch, see scripts/).
#
# torch: TORCH_SPEC pins the version installed into .venv. On a CPU-only Linux machine
# add TORCH_INDEX=https://download.pytorch.org/whl/cpu to avoid PyPI's multi-GB CUDA build.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
MERMAID     := $(VENV)/share/parcourse/mermaid/VERSION
TORCH_FLAGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: book test check venv clean browser gpu-check

venv: $(STAMP) $(MERMAID)

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt parcourse/horovod_install.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -r requirements-dev.txt -e .
	$(BIN)/python -m parcourse install-horovod
	touch $@

# Mermaid's JavaScript (the book's diagrams) from the npm registry, served by the site itself.
$(MERMAID): scripts/install-mermaid.sh | $(STAMP)
	@command -v npm >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq npm >/dev/null; }
	scripts/install-mermaid.sh $(VENV)

book: $(STAMP) $(MERMAID)
	$(BIN)/jupyter-book build . --warningiserror --nitpick --keep-going

# TORCH_INDEX also reaches the Colab-reader test, which installs torch into a fresh venv.
test: $(STAMP) $(MERMAID) browser
	TORCH_INDEX="$(TORCH_INDEX)" $(BIN)/python -m pytest

# The fast loop: the unit tests, in this process only (no workers, no book), in well
# under two minutes. `make test` runs them too, with everything else.
check: $(STAMP)
	$(BIN)/python -m pytest tests/unit -m "not distributed" -q

# The real-browser test drives Debian's Chromium (never a downloaded browser). As root
# with apt-get it is installed here; elsewhere install it yourself, or that test skips.
# A Chinese font lets its screenshots show the chapters' Chinese titles.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } \
	  || echo "note: no chromium, and no root to install it: the browser test will skip"
	@fc-list :lang=zh 2>/dev/null | grep -q . || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq fonts-wqy-microhei >/dev/null; } \
	  || echo "note: no Chinese font: screenshots show boxes for the Chinese titles"

# On a CUDA machine: `python -m parcourse bench kernels` (72 s on an H100), pipeline memory,
# the GPU tests, every notebook (nbmake), and one JSON report in parcourse/measurements/gpu/
# (see parcourse/kernels/gpu_check.py).
# Without an NVIDIA GPU it stops at once, before building anything. Where $(PYTHON) already
# has a CUDA torch, Triton and nbmake (Colab, Kaggle: `pip install nbmake` first), it runs
# with them and the repository on PYTHONPATH; otherwise it builds .venv first.
GPU_READY := import torch, triton, nbmake; assert torch.cuda.is_available()
gpu-check:
	@command -v nvidia-smi >/dev/null 2>&1 || { echo "make gpu-check: no NVIDIA GPU here (nvidia-smi not found): run it on a machine with an NVIDIA GPU (Colab, Kaggle, a cloud GPU)." >&2; exit 2; }
	@if $(PYTHON) -c "$(GPU_READY)" 2>/dev/null; then \
	  echo "make gpu-check: with $$($(PYTHON) -c 'import sys; print(sys.executable)') and its torch"; \
	  PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" $(PYTHON) -m parcourse.kernels.gpu_check; \
	else $(MAKE) --no-print-directory $(STAMP) && $(BIN)/python -m parcourse.kernels.gpu_check; fi

clean:
	rm -rf _build
