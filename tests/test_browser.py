"""The web page end to end in a real headless Chromium (Debian's `chromium`, driven by
playwright's Python client; scripts/test-setup.sh installs the browser): search a code by its
title, fill the profile, add an earlier visit, submit, read the ranking and the DDI warning."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest
import uvicorn

import leader
from leader.serve import ServeSettings, create_app

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None, reason="chromium missing: run scripts/test-setup.sh"
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(bundles):
    yield from serve(leader.load(bundles["ddi"]))


@pytest.fixture(scope="module")
def logreg_server(tiny_data, tmp_path_factory):
    """A model whose explanations are not empty (logreg: exact weight × input)."""
    from leader.bundle import save_bundle
    from leader.models.base import model_class

    model = model_class("logreg")(tiny_data.schema, {"max_iter": 50}).fit(tiny_data)
    yield from serve(leader.load(save_bundle(model, tmp_path_factory.mktemp("lr") / "lr")))


def serve(rec):
    port = free_port()
    config = uvicorn.Config(
        create_app(rec, ServeSettings(port=port)),
        host="127.0.0.1",
        port=port,
        access_log=False,
        log_level="warning",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_fill_form_and_read_result(server, tiny_data):
    from playwright.sync_api import expect, sync_playwright

    a, b = tiny_data.ddi_pairs[0]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            expect(page.locator("#model-line")).to_contain_text("popular-")
            page.select_option("#profile-gender", "F")
            page.fill("#profile-age", "67")

            # search by words of the title, pick the suggestion
            page.fill("#dx-input", "diagnosis icd9:40")
            page.locator("#dx-suggest li").first.wait_for()
            first = page.locator("#dx-suggest li").first.get_attribute("data-code")
            page.locator("#dx-suggest li").first.click()
            expect(page.locator(f'#dx-chips .chip[data-code="{first}"]')).to_be_visible()
            # a code typed as is (unknown to the model) is sent and comes back as a warning
            page.fill("#px-input", "99.99")
            page.wait_for_timeout(300)
            page.press("#px-input", "Enter")
            page.click("#add-visit")
            page.fill("#h0-drugs-input", a)
            page.locator("#h0-drugs-suggest li").first.wait_for()
            page.press("#h0-drugs-input", "Enter")
            expect(page.locator(f'#h0-drugs-chips .chip[data-code="{a}"]')).to_be_visible()

            page.fill("#top-k", "2")
            page.click("#submit")
            expect(page.locator("#result")).to_be_visible()
            rows = page.locator("#ranked tbody tr")
            expect(rows.first).to_have_attribute("data-code", a)
            expect(rows.nth(1)).to_have_attribute("data-code", b)
            assert page.locator("#ranked tbody tr.recommended").count() == 2
            assert rows.count() == min(20, len(tiny_data.drugs))
            expect(page.locator("#ddi")).to_contain_text(tiny_data.drugs.title(a))
            expect(page.locator("#ddi")).to_contain_text(tiny_data.drugs.title(b))
            expect(page.locator("#warnings")).to_contain_text("icd9:9999")
            width = page.locator("#ranked tbody tr .bar span").first.evaluate("e => e.style.width")
            assert width == "90%"
            expect(page.locator("#show-all")).to_be_hidden()  # every class is already shown

            # a bad request shows the server's message instead of a result
            page.fill("#dx-input", "X" * 40)
            page.press("#dx-input", "Enter")
            page.click("#submit")
            expect(page.locator("#error")).to_contain_text("at most 32 characters")
            assert errors == []
        finally:
            browser.close()


def test_explanations_titles_and_one_line_probabilities(logreg_server, tiny_data, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    dx = tiny_data.vocab["diagnoses"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(logreg_server + "/")
            expect(page.locator("#model-line")).to_contain_text("logreg-")
            page.select_option("#profile-gender", "F")
            for code in dx.codes[:3]:
                page.fill("#dx-input", code)
                page.locator(f'#dx-suggest li[data-code="{code}"]').wait_for()
                page.press("#dx-input", "Enter")
                # the chip reads as the code's title, not the code
                chip = page.locator(f'#dx-chips .chip[data-code="{code}"]')
                expect(chip).to_contain_text(dx.title(code))
                assert chip.get_attribute("title") == code
            page.fill("#top-k", "3")
            page.click("#submit")
            expect(page.locator("#result")).to_be_visible()
            why = page.locator("#ranked tbody tr.recommended .why")
            assert why.count() == 3
            expect(why.first).to_be_visible()
            expect(why.first).to_contain_text("because:")
            text = " ".join(why.all_inner_texts())
            assert any(dx.title(c) in text for c in dx.codes[:3]), text
            assert "log-odds" in text  # logreg: exact contributions
            # the screenshot shows it: the explanation's box holds dark text pixels
            shot = tmp_path / "why.png"
            why.first.screenshot(path=str(shot))
            image = Image.open(shot).convert("L")
            assert image.width > 50 and image.height > 5
            assert sum(image.histogram()[:160]) > 30  # pixels darker than the background
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            # a probability stays on one line with its bar
            prob = page.locator("#ranked tbody tr td.prob").first
            code_cell = page.locator("#ranked tbody tr td.code").first
            assert prob.evaluate("e => e.getClientRects().length") == 1
            line = code_cell.evaluate("e => parseFloat(getComputedStyle(e).lineHeight)")
            inner = prob.evaluate(
                "e => { const r = document.createRange(); r.selectNodeContents(e); "
                "return r.getBoundingClientRect().height; }")
            assert inner < 1.6 * line, (inner, line)
            assert errors == []
        finally:
            browser.close()
