"""The web page of `masklm serve` in a real headless browser (Playwright driving Debian's chromium): a person
picks a model, types a sentence with [MASK] and reads the candidates; a classifier's label bars; a phone-sized
window without sideways scrolling.

This test is not skipped when chromium is missing: scripts/setup.sh installs it (apt-get install chromium), and
a machine where that failed should say so loudly rather than pass quietly.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def page():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install it with `apt-get install chromium` (scripts/setup.sh does)"
        )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser.new_page(viewport={"width": 390, "height": 844})  # a phone-sized window
        browser.close()


def open_page(page, server) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)


def test_fill_mask_candidates_in_the_page(page, server):
    text = "alpha [MASK] charlie delta"
    open_page(page, server)
    page.select_option("#model", "tiny")
    page.fill("#text", text)
    page.click("#run")
    page.wait_for_selector(".mask .row")
    shown = page.locator(".mask .row .name").all_inner_texts()
    scores = [float(s) for s in page.locator(".mask .row .score").all_inner_texts()]
    api = httpx.post(server.url + "/v1/fill-mask", json={"model": "tiny", "inputs": text, "top_k": 5}).json()
    assert shown == [c["token"] for c in api["outputs"][0][0]]
    assert scores == pytest.approx([c["score"] for c in api["outputs"][0][0]], abs=1e-3)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_classifier_bars_and_errors_in_the_page(page, server):
    open_page(page, server)
    page.select_option("#model", "cls")
    page.fill("#text", "alpha great bravo")
    page.click("#run")
    page.wait_for_selector(".bars .row")
    assert sorted(page.locator(".row .name").all_inner_texts()) == ["neg", "pos"]
    page.fill("#text", "   ")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "empty" in page.inner_text("#error")


def test_tagger_and_qa_highlight_the_text(page, server):
    open_page(page, server)
    page.select_option("#model", "qa")
    # emoji before the spans: the API's offsets count code points, JavaScript's strings UTF-16 units
    context = "\U0001f355\U0001f355 the key is alice smith in paris"
    page.fill("#question", "what is the key ?")
    page.fill("#context", context)
    page.click("#run")
    page.wait_for_selector(".marked mark")
    body = {"model": "qa", "inputs": {"question": "what is the key ?", "context": context}}
    answer = httpx.post(server.url + "/v1/predict", json=body).json()["outputs"][0]["answer"]
    assert page.inner_text(".marked mark") == answer
    assert page.inner_text(".marked") == context

    text = "\U0001f355 alice smith went to \U0001f355 paris"
    page.select_option("#model", "ner")
    page.fill("#text", text)
    page.click("#run")
    page.wait_for_selector(".marked")
    entities = httpx.post(server.url + "/v1/predict", json={"model": "ner", "inputs": text}).json()[
        "outputs"
    ][0]
    marks = page.locator(".marked mark")
    assert entities["entities"] and marks.count() > 0  # the untrained tagger marks words of this text
    assert marks.count() == len(entities["entities"])
    for i, e in enumerate(entities["entities"]):
        assert marks.nth(i).inner_text().startswith(e["text"])
