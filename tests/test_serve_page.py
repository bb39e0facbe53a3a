"""Per-token scores (``"tokens": true``) and the inspection page at the gateway's ``/``, on the real
server (Triton + gateway with an API key); the page itself in headless Chromium (skipped without it).
"""

import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tokfilter.paths import ARTIFACTS
from tokfilter.scoring import ScoringPipeline, hide_spans
from tokfilter.server.model_repo import place_models
from tokfilter.server.serve import running_server
from tokfilter.server.triton import free_port
from tokfilter.windows import Span, char_probabilities, spans_from_char_probs

API_KEY = "page-key"
KEY_HEADER = {"X-API-Key": API_KEY}
MEDICAL = "The patient was given 500 mg of metformin twice daily to control her type 2 diabetes."
BIOLOGY_PARAGRAPH = (
    "Mitochondria produce most of the cell's ATP by oxidative phosphorylation across the inner membrane. "
    f"{MEDICAL} "
    "In plants, chloroplasts capture light and fix carbon dioxide into sugars through the Calvin cycle."
)
UNICODE_TEXT = "Naïve café 😀: the patient 🧬 took 500 mg of ibuprofen, e\u0301 \u200b twice daily for fever."
SCREENSHOTS = ARTIFACTS / "test-screenshots"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-proxy-server", "--window-size=1280,900"]


@pytest.fixture(scope="module")
def models_dir(tiny_corpus_dir, tiny_models_dir, tmp_path_factory) -> Path:
    """The tiny document model and a token model trained long enough (40 steps, ~1 min on 2 cores)
    to tell a medical sentence from biology, which the 4-step tiny one cannot."""
    from tokfilter.training.classifier.train import TrainConfig, train_classifier

    out = tmp_path_factory.mktemp("page_models")
    config = TrainConfig(task="token", layers=1, max_steps=40, batch_size=8, lr=1e-3, max_length=64, stride=16)
    train_classifier(config, tiny_corpus_dir, out / "token_classifier", threads=2, log=io.StringIO())
    shutil.copytree(tiny_models_dir / "doc_classifier", out / "doc_classifier")
    return out


@pytest.fixture(scope="module")
def server(models_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("page_repo")
    place_models(models_dir, repo)
    ports = {name: free_port() for name in ("grpc_port", "http_port", "metrics_port", "gateway_port")}
    with running_server(repo, api_key=API_KEY, ort_threads=1, log_dir=tmp_path_factory.mktemp("logs"), **ports) as endpoints:
        yield endpoints


@pytest.fixture(scope="module")
def local_pipeline(models_dir) -> ScoringPipeline:
    return ScoringPipeline.from_model_dirs(models_dir / "token_classifier", models_dir / "doc_classifier")


def filter_request(server, texts: list[str], **options) -> dict:
    documents = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    payload = json.dumps({"documents": documents} | options)  # ASCII: a lone surrogate is escaped
    response = httpx.post(f"{server.gateway_url}/v1/filter", content=payload, headers=KEY_HEADER | {"Content-Type": "application/json"},
                          timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def span_pairs(spans) -> list[list[int]]:
    """[[start, end], ...] of served (JSON) or local (Span) spans, as the page reports them."""
    return [[s["start"], s["end"]] if isinstance(s, dict) else [s.start, s.end] for s in spans]


# ---------------------------------------------------------------------------------- API


def test_tokens_are_the_pipelines_offsets_and_probabilities(server, local_pipeline):
    texts = [BIOLOGY_PARAGRAPH, "", "odd \ud800 unicode 🧬 e\u0301 end"]
    body = filter_request(server, texts, tokens=True)
    for result, local in zip(body["results"], local_pipeline.score(texts)):
        assert result["tokens"]["offsets"] == local.offsets.tolist()
        np.testing.assert_allclose(result["tokens"]["probs"], local.token_probs, atol=1e-5)
    assert body["results"][1]["tokens"] == {"offsets": [], "probs": []}
    assert filter_request(server, texts[:1])["results"][0]["tokens"] is None  # only when asked for


def test_spans_derived_from_tokens_equal_the_servers_at_any_threshold(server):
    """The documented rule (tokfilter.windows) applied by a client to the token scores gives the
    spans the server returns at that threshold: a client can choose its threshold afterwards."""
    tokens = filter_request(server, [BIOLOGY_PARAGRAPH], tokens=True)["results"][0]["tokens"]
    probs = np.asarray(tokens["probs"], dtype=np.float32)
    chars = char_probabilities(np.asarray(tokens["offsets"]), probs, len(BIOLOGY_PARAGRAPH))
    thresholds = [float(q) for q in np.quantile(probs, [0.1, 0.5, 0.9])] + [0.0, 1.0]
    counts = set()
    for threshold in thresholds:
        served = filter_request(server, [BIOLOGY_PARAGRAPH], threshold=threshold)["results"][0]
        assert span_pairs(served["spans"]) == span_pairs(spans_from_char_probs(chars, threshold))
        assert served["flagged_fraction"] == pytest.approx(float(np.mean(probs >= np.float32(threshold))))
        counts.add(len(served["spans"]))
    assert len(counts) > 1  # the thresholds do flag different spans


def test_tokens_obey_the_limits_and_are_documented(server):
    too_long = {"documents": [{"id": "a", "text": "x" * 1_000_001}], "tokens": True}
    response = httpx.post(f"{server.gateway_url}/v1/filter", json=too_long, headers=KEY_HEADER, timeout=60)
    assert response.status_code == 413 and response.json()["limit"] == "max_chars"
    schemas = httpx.get(f"{server.gateway_url}/openapi.json").json()["components"]["schemas"]
    assert "threshold" in schemas["FilterRequest"]["properties"]["tokens"]["description"]
    assert "TokenScores" in json.dumps(schemas["DocumentResult"]["properties"]["tokens"])
    assert {"offsets", "probs"} <= set(schemas["TokenScores"]["properties"])
    assert all(p.get("description") for p in schemas["TokenScores"]["properties"].values())


def test_page_is_served_without_a_key_and_loads_nothing_remote(server):
    page = httpx.get(f"{server.gateway_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == ["static/page.css", "static/page.js"]  # no CDN, nothing remote
    for asset in assets:
        assert httpx.get(f"{server.gateway_url}/{asset}").status_code == 200
    assert httpx.get(f"{server.gateway_url}/static/../gateway.py").status_code == 404
    assert "/" not in httpx.get(f"{server.gateway_url}/openapi.json").json()["paths"]


# ------------------------------------------------------------------------------ browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("no chromium/chromedriver (make test installs the Debian packages chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for a browser or driver online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def page_state(driver) -> dict:
    """What the page shows: highlighted ranges per document, the threshold, messages, the key dialog."""
    return driver.execute_script(
        """return {
            threshold: threshold,
            marks: Array.from(document.querySelectorAll('article.doc')).map(a =>
                Array.from(a.querySelectorAll('mark.flagged')).map(m => [Number(m.dataset.start), Number(m.dataset.end)])),
            markTexts: Array.from(document.querySelectorAll('article.doc')).map(a =>
                Array.from(a.querySelectorAll('mark.flagged')).map(m => m.textContent)),
            texts: Array.from(document.querySelectorAll('article.doc .text')).map(t => t.textContent),
            docErrors: Array.from(document.querySelectorAll('article.doc .error')).map(e => e.textContent),
            messages: Array.from(document.querySelectorAll('#messages .error')).map(e => e.textContent),
            pending: document.querySelectorAll('article.doc.pending').length,
            keyDialogOpen: document.getElementById('key-dialog').open,
            keyReason: document.getElementById('key-reason').textContent,
            summary: document.getElementById('summary').textContent,
        };"""
    )


def settled(driver) -> dict | None:
    state = page_state(driver)
    return state if state["pending"] == 0 and not state["keyDialogOpen"] else None


def enter_key(driver, key: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "key-submit").click()


@pytest.mark.slow
def test_page_in_a_browser(server, browser):
    """Paste a medical sentence inside a biology paragraph, give the API key when asked, see the
    spans, move the slider, preview remove mode; bad input gets messages."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{server.gateway_url}/")
    assert browser.title.startswith("tokfilter")

    # empty text: a message, no request
    browser.find_element(By.ID, "score-text").click()
    assert "empty" in page_state(browser)["messages"][0]

    browser.find_element(By.ID, "text").send_keys(BIOLOGY_PARAGRAPH)
    browser.find_element(By.ID, "score-text").click()
    # the gateway answers 401: the page asks for the key; a wrong one is refused and asked again
    state = wait_for(lambda: (s := page_state(browser))["keyDialogOpen"] and s, what="the key prompt")
    assert "API key" in state["keyReason"]
    enter_key(browser, "wrong-key")
    wait_for(lambda: "refused" in page_state(browser)["keyReason"] and page_state(browser)["keyDialogOpen"], what="a second prompt")
    enter_key(browser, API_KEY)
    state = wait_for(lambda: settled(browser), what="the scores")
    assert browser.execute_script("return [localStorage.length, sessionStorage.length, document.cookie]") == [0, 0, ""]

    # the highlighted spans are the server's at the page's threshold (the model's to begin with)
    served = filter_request(server, [BIOLOGY_PARAGRAPH])
    assert state["threshold"] == served["threshold"]
    assert state["marks"] == [span_pairs(served["results"][0]["spans"])]
    assert state["texts"] == [BIOLOGY_PARAGRAPH]
    # the medical sentence is what is highlighted: spans inside it, and a larger share of it than of the biology
    medical = range(BIOLOGY_PARAGRAPH.index(MEDICAL), BIOLOGY_PARAGRAPH.index(MEDICAL) + len(MEDICAL))
    highlighted = {c for start, end in state["marks"][0] for c in range(start, end)}
    in_medical = len(highlighted & set(medical)) / len(medical)
    in_biology = len(highlighted - set(medical)) / (len(BIOLOGY_PARAGRAPH) - len(medical))
    assert in_medical > 0 and in_medical > 2 * in_biology, (in_medical, in_biology)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "page.png"))

    # the slider re-colours without a request: at 0 every character is flagged (one span); at the
    # median token probability the server's spans at that threshold
    slider = browser.find_element(By.ID, "threshold")
    slider.send_keys(Keys.HOME)
    wait_for(lambda: page_state(browser)["marks"] == [[[0, len(BIOLOGY_PARAGRAPH)]]], timeout=5, what="one span at 0")
    probs = filter_request(server, [BIOLOGY_PARAGRAPH], tokens=True)["results"][0]["tokens"]["probs"]
    steps = int(round(100 * float(np.median(probs))))
    slider.send_keys(Keys.ARROW_RIGHT * steps)
    threshold = page_state(browser)["threshold"]
    assert threshold == pytest.approx(steps / 100)
    expected = span_pairs(filter_request(server, [BIOLOGY_PARAGRAPH], threshold=threshold)["results"][0]["spans"])
    assert len(expected) > 1  # the count changes from 1
    state = wait_for(lambda: (s := page_state(browser))["marks"] == [expected] and s, timeout=5, what="the server's spans")
    browser.save_screenshot(str(SCREENSHOTS / "page-spans.png"))

    # remove preview: the text the gateway's remove mode returns
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=remove]").click()
    removed = filter_request(server, [BIOLOGY_PARAGRAPH], threshold=state["threshold"], mode="remove")["results"][0]["text"]
    assert page_state(browser)["texts"] == [removed]
    assert removed == hide_spans(BIOLOGY_PARAGRAPH, [Span(a, b, 1.0) for a, b in expected])
    browser.save_screenshot(str(SCREENSHOTS / "page-remove.png"))
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=spans]").click()


def test_page_reports_bad_jsonl_lines_and_documents_over_the_limit(server, browser, tmp_path):
    """A malformed line is named and the other documents are still shown; a document over the
    gateway's max_chars shows the gateway's 413 message in its card."""
    from selenium.webdriver.common.by import By

    browser.get(f"{server.gateway_url}/")  # a reload forgets the key: asked again
    lines = [json.dumps({"id": "bio", "text": BIOLOGY_PARAGRAPH}), '{"id": "broken", "text": ', json.dumps({"id": "no-text"}),
             "", json.dumps({"id": "huge", "text": "x" * 1_000_001}), json.dumps({"text": MEDICAL}),
             json.dumps({"id": "unicode", "text": UNICODE_TEXT})]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    browser.find_element(By.ID, "file").send_keys(str(path))
    wait_for(lambda: page_state(browser)["keyDialogOpen"], what="the key prompt")
    enter_key(browser, API_KEY)
    state = wait_for(lambda: settled(browser), what="the scores")
    assert any("docs.jsonl line 2: not valid JSON" in m for m in state["messages"])
    assert any("docs.jsonl line 3" in m and '"text"' in m for m in state["messages"])
    assert len(state["marks"]) == 4 and state["texts"][0] == BIOLOGY_PARAGRAPH  # bio, huge (refused), line 6, unicode
    assert len(state["docErrors"]) == 1
    assert "huge" in state["docErrors"][0] and "413" in state["docErrors"][0] and "max_chars=1000000" in state["docErrors"][0]
    ids = browser.execute_script("return Array.from(document.querySelectorAll('.doc-id')).map(e => e.textContent)")
    assert ids == ["bio", "huge", "line 6", "unicode"]
    # offsets are code points: the page shows and highlights astral and combining characters as the server does
    tokens = filter_request(server, [UNICODE_TEXT], tokens=True)["results"][0]["tokens"]
    emoji = UNICODE_TEXT.index("😀")
    at_emoji = max(p for (a, b), p in zip(tokens["offsets"], tokens["probs"]) if a <= emoji < b)  # flags the emoji
    for threshold in (state["threshold"], at_emoji):
        browser.execute_script("setThreshold(arguments[0]); renderAll();", threshold)
        served = filter_request(server, [UNICODE_TEXT], threshold=threshold)["results"][0]["spans"]
        state = page_state(browser)
        assert state["texts"][2] == UNICODE_TEXT and state["marks"][3] == span_pairs(served)
        assert state["markTexts"][3] == [UNICODE_TEXT[a:b] for a, b in span_pairs(served)]  # Python slices code points
    assert any(ord(c) > 0xFFFF for text in state["markTexts"][3] for c in text)  # the test covers an astral character

    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("not json\n")
    browser.find_element(By.ID, "file").send_keys(str(only_bad))
    messages = wait_for(lambda: (m := page_state(browser)["messages"]) and "bad.jsonl" in m[0] and m, what="bad.jsonl's messages")
    assert "bad.jsonl line 1: not valid JSON" in messages[0] and "no document" in messages[-1]
