"""End-to-end browser test of the web page (server/static/): a real server, a real headless Chromium.

Skipped unless /usr/bin/chromium exists and the ``playwright`` Python package is importable (Playwright
drives the system Chromium through ``executable_path``; it never downloads a browser). The server runs
as a subprocess (``python -m server``) on a free port with two tiny untrained models; the A/B button is
tested on a second one serving the shipped Starry Night models and a few tiny ones, the style blend of a
multi-style model on a third, video jobs on a fourth (with a tiny model trained "for video"). The browser may only talk to the server: any other request is aborted and
fails the test (no CDN, no internet).

A full-page screenshot is written to tests/artifacts/browser.png and to the test's tmp folder (the
finished video job: browser-video.png).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from style_transfer.checkpoint import ModelInfo, save_model
from style_transfer.imageio import HEIF, format_name, media_types
from style_transfer.network import TransformerConfig, TransformerNet

from .test_conditional import STYLES, three_style_model

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
MODELS = {"tiny-instance": "instance", "tiny-batch": "batch"}
READY_TIMEOUT_S = 120
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _sync_playwright():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found (install the Debian 'chromium' package)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the 'playwright' Python package is not installed")
    return sync_playwright


def _write_model(path: Path, norm: str, seed: int = 0, style_name: str = "test-style", steps: int = 5,
                 training: dict | None = None) -> None:
    torch.manual_seed(seed)
    config = TransformerConfig(norm=norm, width=8, num_residual=1)
    model = TransformerNet(config).eval()
    save_model(path, model, ModelInfo(config, style_name=style_name, steps=steps, training=training or {}))


def _write_models(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, norm) in enumerate(MODELS.items()):
        _write_model(folder / f"{name}.safetensors", norm, seed)


def _write_photo(path: Path, size: tuple[int, int] = (96, 64)) -> Path:
    """A photo-like PNG: a sky-to-ground gradient, a sun and a few hills (smooth, with edges)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = y / (h - 1)
    img = np.stack([70 + 120 * t, 130 + 60 * t, 230 - 150 * t], axis=-1)
    sun = (x - 0.72 * w) ** 2 + (y - 0.3 * h) ** 2 < (0.12 * h) ** 2
    img[sun] = (250, 215, 90)
    hills = y > 0.62 * h + 0.12 * h * np.sin(x / w * 2 * np.pi * 1.5)
    img[hills] = np.stack([40 + 40 * t, 110 + 50 * np.cos(x / 7), 50 + 0 * x], axis=-1)[hills]
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def _log_tail(log: Path, n: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def playwright_factory():
    return _sync_playwright()


@contextlib.contextmanager
def _serve(weights: Path, port: int, log: Path, **settings: str) -> Iterator[str]:
    """Run ``python -m server`` on ``weights`` (and more ``STYLE_TRANSFER_*`` settings); yield its base URL
    once /readyz answers 200."""
    env = dict(os.environ, STYLE_TRANSFER_WEIGHTS=str(weights), STYLE_TRANSFER_DEVICE="cpu",
               STYLE_TRANSFER_WARMUP_SIZE="16", PYTHONUNBUFFERED="1", **settings)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as res:
                    if res.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {READY_TIMEOUT_S} s:\n{_log_tail(log)}")
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def server(playwright_factory, tmp_path_factory, free_port):
    """The server with the two tiny models of MODELS, painting at 768 px (not the default: the page must
    show the server's paint size, not its own text)."""
    root = tmp_path_factory.mktemp("browser_server")
    _write_models(root / "weights")
    with _serve(root / "weights", free_port(), root / "server.log", STYLE_TRANSFER_PAINT_SIZE="768") as base:
        yield base


SHIPPED_WEIGHTS = REPO_ROOT / "weights"
STARRY_SET = [f"starry-night-{norm}" for norm in ("instance", "batch", "group", "layer")]


@pytest.fixture(scope="module")
def ab_server(playwright_factory, tmp_path_factory, free_port):
    """The shipped Starry Night models (an A/B set of four norms beside a flagship of another recipe),
    plus tiny models of two made-up styles for the other branches of the A/B choice."""
    root = tmp_path_factory.mktemp("browser_ab_server")
    weights = root / "weights"
    weights.mkdir()
    for name in ["starry-night", *STARRY_SET]:
        (weights / f"{name}.safetensors").symlink_to(SHIPPED_WEIGHTS / f"{name}.safetensors")
    # Like Starry Night, with a flagship trained longer than its set (so grouping by style alone would
    # pick it): the set is chosen, one model per norm.
    _write_model(weights / "flag-flagship.safetensors", "instance", style_name="flag-style", steps=50,
                 training={"lr": 5e-4})
    for norm in ("instance", "group", "layer"):
        _write_model(weights / f"flag-set-{norm}.safetensors", norm, style_name="flag-style", steps=10,
                     training={"lr": 1e-3})
    # Two A/B sets with the same norms: the longer-trained one is chosen.
    for tag, lr, steps in (("a", 1.0, 5), ("b", 2.0, 9)):
        for norm in ("instance", "batch"):
            _write_model(weights / f"tie-{tag}-{norm}.safetensors", norm, style_name="tie-style", steps=steps,
                         training={"lr": lr})
    # No two models share a recipe: one model per norm over the style, the longest-trained.
    for name, norm, lr, steps in (("mixed-instance", "instance", 1.0, 5), ("mixed-batch-short", "batch", 2.0, 3),
                                  ("mixed-batch-long", "batch", 3.0, 9)):
        _write_model(weights / f"{name}.safetensors", norm, style_name="mixed-style", steps=steps,
                     training={"lr": lr})
    with _serve(weights, free_port(), root / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser(playwright_factory):
    with playwright_factory() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def _open_page(browser, server: str, models_json=None):
    """A fresh page at the server's root; fails the test on JS errors or requests to other hosts.
    ``models_json``: rewrites the body of GET /v1/models as the page receives it (a server we cannot
    start here, e.g. one whose Pillow lacks AVIF)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(30_000)
    js_errors: list[str] = []
    foreign: list[str] = []
    page.on("pageerror", lambda exc: js_errors.append(str(exc)))

    def only_this_server(route):
        url = route.request.url
        if url.startswith(server + "/") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            foreign.append(url)
            route.abort()

    page.route("**/*", only_this_server)
    if models_json is not None:
        def rewrite(route):
            response = route.fetch()
            route.fulfill(response=response, json=models_json(response.json()))

        page.route("**/v1/models", rewrite)
    page.goto(server + "/")
    page.wait_for_selector('#status[data-state="ready"]')
    page.wait_for_selector("#models input[name=model]")  # filled from GET /v1/models
    yield page
    context.close()
    assert not js_errors, f"JavaScript errors on the page: {js_errors}"
    assert not foreign, f"the page tried to load from other hosts: {foreign}"


@pytest.fixture
def page(browser, server):
    with _open_page(browser, server) as page:
        yield page


def _upload_and_select(page, photo: Path, selected: list[str]) -> None:
    page.set_input_files("#file-input", str(photo))
    page.wait_for_function("document.querySelector('#original-preview').naturalWidth > 0")
    for name in MODELS:
        box = page.locator(f'#models input[type=checkbox][name=model][value="{name}"]')
        if name in selected:
            box.check()
        else:
            box.uncheck()


def _wait_for_results(page, count: int) -> None:
    page.wait_for_function(
        """(count) => {
            const cards = document.querySelectorAll('#results .result');
            return cards.length === count && Array.from(cards).every((card) => {
                const img = card.querySelector('img.stylized');
                const elapsed = card.querySelector('.elapsed');
                return img && img.complete && img.naturalWidth > 0 && elapsed && elapsed.textContent.trim();
            });
        }""",
        arg=count,
        timeout=60_000,
    )


def _error_text(page) -> str:
    return (page.text_content("#error") or "").strip()


def test_compare_two_models_in_the_browser(page, tmp_path):
    photo = _write_photo(tmp_path / "photo.png")
    assert "cpu" in page.inner_text("#device").lower()
    assert page.locator("#models input[name=model]").count() == len(MODELS)
    assert page.locator("#style-mix").is_hidden()  # ordinary models: no style selector

    _upload_and_select(page, photo, list(MODELS))
    assert "2" in page.inner_text("#run")  # "Compare 2 models"
    page.click("#run")
    _wait_for_results(page, 2)

    assert _error_text(page) == "", _error_text(page)
    cards = page.locator("#results .result")
    assert {cards.nth(i).get_attribute("data-model") for i in range(2)} == set(MODELS)
    for name, norm in MODELS.items():
        card = page.locator(f'#results .result[data-model="{name}"]')
        assert re.search(r"\d.*ms", card.locator(".elapsed").inner_text()), card.locator(".elapsed").inner_text()
        assert norm in card.inner_text()
        # A comparison shows what each output kept of the photo (from /v1/compare's metrics).
        assert re.search(r"SSIM -?[01]\.\d\d · dark spots \d+\.\d\d%", card.locator(".result-info").inner_text())
        # The stylized output has the photo's size, and the original sits underneath it.
        size = card.locator("img.stylized").evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size == [96, 64]
        assert card.locator("img.original").evaluate("img => img.naturalWidth") == 96
        href = card.locator("a.download").get_attribute("href")
        assert href.startswith("data:image/png;base64,")
        assert card.locator("a.download").get_attribute("download").endswith(".png")
    assert page.is_enabled("#run")

    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # the sticky header belongs at the top of the shot
    shot = page.screenshot(full_page=True, animations="disabled")
    (ARTIFACTS / "browser.png").write_bytes(shot)
    (tmp_path / "browser.png").write_bytes(shot)


def test_single_model_and_before_after_slider(page, tmp_path):
    photo = _write_photo(tmp_path / "photo.png")
    _upload_and_select(page, photo, ["tiny-instance"])
    page.click("#run")  # one model: POST /v1/stylize
    _wait_for_results(page, 1)
    assert _error_text(page) == "", _error_text(page)

    card = page.locator('#results .result[data-model="tiny-instance"]')
    assert re.search(r"\d.*ms", card.locator(".elapsed").inner_text())
    assert "SSIM" not in card.locator(".result-info").inner_text()  # /v1/stylize measures nothing
    assert card.locator("a.download").get_attribute("href").startswith("blob:")

    overlay = card.locator(".compare-after")

    def divider() -> float:
        """The stylized overlay's left clip inset, in % (from the computed clip-path)."""
        return _left_inset(overlay.evaluate("el => getComputedStyle(el).clipPath"))

    assert divider() == pytest.approx(50)
    card.locator("input.compare-range").fill("20")  # sets the value and fires 'input'
    assert divider() == pytest.approx(20)

    card.locator("input.compare-range").focus()  # keyboard
    page.keyboard.press("End")
    assert divider() == pytest.approx(100)
    page.keyboard.press("Home")
    assert divider() == pytest.approx(0)
    page.keyboard.press("ArrowRight")
    assert 0 < divider() <= 10

    box = card.locator(".compare").bounding_box()  # pointer: drag the divider to 3/4 of the width
    page.mouse.move(box["x"] + 5, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2, steps=4)
    page.mouse.up()
    assert divider() == pytest.approx(75, abs=2)


@pytest.mark.skipif(not HEIF, reason="the optional HEIC support (pillow-heif) is not installed")
def test_a_photo_the_browser_cannot_show_is_shown_as_the_server_reads_it(page, tmp_path):
    """Chrome and Firefox cannot show a HEIC photo, which the server reads: the page says so, runs even one
    model through /v1/compare (which returns the server's reading of the photo), and shows that in the
    preview and under the stylized image (before: a broken image on both)."""
    photo = tmp_path / "IMG_0001.HEIC"
    Image.open(_write_photo(tmp_path / "photo.png")).save(photo, format="HEIF", quality=95)
    page.set_input_files("#file-input", str(photo))
    page.wait_for_function("document.querySelector('#file-meta').textContent.includes('cannot show')")
    assert page.locator("#original-preview").evaluate("img => img.naturalWidth") == 0  # Chromium: no HEIC
    for name in MODELS:
        page.locator(f'#models input[type=checkbox][name=model][value="{name}"]').set_checked(name == "tiny-instance")
    page.click("#run")
    _wait_for_results(page, 1)
    assert _error_text(page) == "", _error_text(page)
    card = page.locator('#results .result[data-model="tiny-instance"]')
    original = card.locator("img.original")
    assert original.get_attribute("src").startswith("data:image/")
    assert original.evaluate("img => img.complete && img.naturalWidth") == 96
    page.wait_for_function("document.querySelector('#original-preview').naturalWidth === 96")
    assert "96×64" in page.inner_text("#file-meta")


@pytest.mark.parametrize("formats, names, accept", [
    (["PNG", "JPEG", "WEBP"], "PNG, JPEG or WebP", "image/png,image/jpeg,image/webp"),
    (["PNG", "JPEG", "WEBP", "AVIF", "HEIF"], "PNG, JPEG, WebP, AVIF or HEIC",
     "image/png,image/jpeg,image/webp,image/avif,image/heic,image/heif"),
])
def test_the_page_names_the_formats_the_server_reads(browser, server, formats, names, accept):
    """A server whose Pillow lacks libavif reads PNG, JPEG and WebP; one with the optional HEIC support
    reads an iPhone's photos too: the drop zone and the file picker say so, not the page's own list."""
    def reads(body):
        return {**body, "input_formats": formats, "input_format_names": [format_name(f) for f in formats],
                "input_media_types": media_types(formats), "video": _no_video(body)}

    with _open_page(browser, server, reads) as page:
        assert page.inner_text("#format-names") == names
        assert page.get_attribute("#file-input", "accept") == accept
        assert page.locator("#video-formats").is_hidden()  # a server without videos: photos only
        assert page.inner_text("#photo-title") == "1\nPhoto"


def test_stroke_size_is_sent_only_when_chosen(page, tmp_path):
    """The Stroke size choice reaches the API as ``paint_size`` (Large: 512, Fine: 0); Standard, and Reset,
    send none, so the server's own paint size applies."""
    photo = _write_photo(tmp_path / "photo.png")
    _upload_and_select(page, photo, ["tiny-instance"])
    assert page.inner_text("#paint-default") == "768\u00a0px"  # what Standard means on this server

    def sent_fields() -> dict[str, str]:
        with page.expect_request("**/v1/stylize") as request:
            page.click("#run")
        _wait_for_results(page, 1)
        body = request.value.post_data_buffer.decode("latin-1")
        return dict(re.findall(r'name="([a-z_]+)"\r\n\r\n([^\r]*)\r\n', body))

    assert "paint_size" not in sent_fields()
    page.click('label:has(input[name="paint_size"][value="512"])')
    assert sent_fields()["paint_size"] == "512"
    page.click('label:has(input[name="paint_size"][value="0"])')
    assert sent_fields()["paint_size"] == "0"
    assert _error_text(page) == "", _error_text(page)
    page.click("#reset-options")
    assert "paint_size" not in sent_fields()


def _left_inset(clip: str) -> float:
    """Left inset of a computed ``inset(...)`` clip-path, in %; 0 for 0px (CSS shorthand rules)."""
    match = re.fullmatch(r"inset\((.*)\)", clip.strip())
    assert match, clip
    parts = match.group(1).split()
    left = {1: parts[0], 2: parts[1] if len(parts) > 1 else "", 3: parts[1] if len(parts) > 1 else "",
            4: parts[-1]}[len(parts)]
    number = float(re.match(r"-?[\d.]+", left).group(0))
    assert left.endswith("%") or number == 0, clip
    return number


# ----------------------------------------------------------------------------- the A/B button


def _checked(page) -> list[str]:
    return sorted(page.eval_on_selector_all("#models input[name=model]:checked", "els => els.map((e) => e.value)"))


@pytest.mark.parametrize("style, expected", [
    # The set of four norms wins over the flagship (same style, trained without clipping).
    ("vangogh_starry_night_1889", sorted(STARRY_SET)),
    ("flag-style", ["flag-set-group", "flag-set-instance", "flag-set-layer"]),
    # Two sets of two norms: the longer-trained one.
    ("tie-style", ["tie-b-batch", "tie-b-instance"]),
    # No set has two norms: one model per norm over the style, the longest-trained.
    ("mixed-style", ["mixed-batch-long", "mixed-instance"]),
])
def test_the_ab_button_selects_one_norm_ab_set(browser, ab_server, style, expected):
    with _open_page(browser, ab_server) as page:
        button = page.locator(f'#models button.ab-btn[data-style="{style}"]')
        page.locator('#models input[name=model][value="starry-night"]').check()  # cleared by the button
        button.click()
        assert _checked(page) == expected
        assert str(len(expected)) in page.inner_text("#run")  # "Compare N models"


# ----------------------------------------------------------------------------- a multi-style model


@pytest.fixture(scope="module")
def styles_server(playwright_factory, tmp_path_factory, free_port):
    """A tiny 3-style conditional instance norm model (starry, wave, scream) beside an ordinary one."""
    root = tmp_path_factory.mktemp("browser_styles_server")
    weights = root / "weights"
    weights.mkdir()
    model = three_style_model()
    save_model(weights / "multi.safetensors", model,
               ModelInfo(model.config, style_name=" + ".join(STYLES), steps=5, extra={"styles": STYLES}))
    _write_model(weights / "tiny-instance.safetensors", "instance")
    with _serve(weights, free_port(), root / "server.log") as base:
        yield base


def _form_fields(request) -> dict[str, str]:
    """The text fields of a multipart request (the file left out)."""
    body = request.post_data_buffer
    boundary = body.split(b"\r\n", 1)[0]
    fields = {}
    for part in body.split(boundary)[1:-1]:
        head, _, value = part[2:-2].partition(b"\r\n\r\n")  # each part: CRLF, headers, blank line, value, CRLF
        name = re.search(rb'name="([^"]*)"', head)
        if name and b"filename=" not in head:
            fields[name.group(1).decode()] = value.decode()
    return fields


def _shown_image(page, model: str) -> bytes:
    """The bytes of the stylized image a result card shows (a blob: or data: URL)."""
    encoded = page.locator(f'#results .result[data-model="{model}"] img.stylized').evaluate(
        """async (img) => {
            const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
            let s = '';
            for (const b of bytes) s += String.fromCharCode(b);
            return btoa(s);
        }""")
    return base64.b64decode(encoded)


def _select_only(page, names: list[str]) -> None:
    for box in page.locator("#models input[name=model]").all():
        box.set_checked(box.get_attribute("value") in names)


def _posted(path: str):
    return lambda request: request.method == "POST" and request.url.endswith(path)


def _wait_for_new_image(page, model: str, old_src: str) -> None:
    page.wait_for_function(
        """([model, old]) => {
            const img = document.querySelector(`#results .result[data-model="${model}"] img.stylized`);
            return img && img.src !== old && img.complete && img.naturalWidth > 0;
        }""",
        arg=[model, old_src], timeout=60_000)


def test_the_style_blend_of_a_multi_style_model(browser, styles_server, tmp_path):
    photo = _write_photo(tmp_path / "photo.png")
    with _open_page(browser, styles_server) as page:
        panel = page.locator("#style-mix")
        _select_only(page, ["tiny-instance"])
        assert panel.is_hidden()  # an ordinary model: the page as without multi-style models
        _select_only(page, ["multi"])
        assert panel.is_visible()
        assert page.eval_on_selector_all("#style-a option", "els => els.map((e) => e.value)") == STYLES
        assert page.input_value("#style-a") == "starry" and page.input_value("#style-b") == "wave"
        for control, label in (("style-a", "Style A"), ("style-b", "Style B"), ("blend", "Blend")):
            assert page.inner_text(f'label[for="{control}"]') == label  # every control is labelled

        page.set_input_files("#file-input", str(photo))
        page.wait_for_function("document.querySelector('#original-preview').naturalWidth > 0")
        with page.expect_request(_posted("/v1/stylize")) as first:
            page.click("#run")
        assert _form_fields(first.value)["style"] == "starry" and "mix" not in _form_fields(first.value)
        _wait_for_results(page, 1)
        card = page.locator('#results .result[data-model="multi"]')
        assert card.locator(".style-chip").inner_text() == "Starry"
        before, src = _shown_image(page, "multi"), card.locator("img.stylized").get_attribute("src")

        # Moving the slider stylizes again with that mix, and the card shows the new image: the server's.
        with page.expect_request(_posted("/v1/stylize")) as moved:
            page.locator("#blend").fill("0.4")
        fields = _form_fields(moved.value)
        assert fields["mix"] == "starry=0.60,wave=0.40" and "style" not in fields
        assert page.inner_text("#blend-value") == "0.40"
        _wait_for_new_image(page, "multi", src)
        after = _shown_image(page, "multi")
        assert after != before
        expected = page.request.post(styles_server + "/v1/stylize", multipart={
            "file": {"name": "photo.png", "mimeType": "image/png", "buffer": photo.read_bytes()},
            "model": "multi", "mix": "wave=0.4,starry=0.6"})
        assert expected.ok and after == expected.body()
        assert card.locator(".style-chip").inner_text() == "Starry 60% · Wave 40%"

        # All the way to B is style B alone; another B is offered by the second selector.
        src = card.locator("img.stylized").get_attribute("src")
        with page.expect_request(_posted("/v1/stylize")) as end:
            page.locator("#blend").fill("1")
        assert _form_fields(end.value)["style"] == "wave"
        _wait_for_new_image(page, "multi", src)
        src = card.locator("img.stylized").get_attribute("src")
        with page.expect_request(_posted("/v1/stylize")) as other:
            page.select_option("#style-b", "scream")
        assert _form_fields(other.value)["style"] == "scream"
        _wait_for_new_image(page, "multi", src)
        assert _shown_image(page, "multi") not in (before, after)

        # Beside an ordinary model: one comparison, the blend applied to the multi-style model.
        _select_only(page, ["multi", "tiny-instance"])
        assert panel.is_visible()
        page.locator("#blend").fill("0.5")
        with page.expect_request(_posted("/v1/compare")) as compared:
            page.click("#run")
        assert _form_fields(compared.value)["mix"] == "starry=0.50,scream=0.50"
        _wait_for_results(page, 2)
        assert page.get_attribute('#results .result[data-model="multi"]', "data-style") == "starry=0.5,scream=0.5"
        assert page.get_attribute('#results .result[data-model="tiny-instance"]', "data-style") == "test-style"
        assert _error_text(page) == "", _error_text(page)


# ----------------------------------------------------------------------------- video jobs

VIDEO_MAX_BYTES = 200_000


def _no_video(body: dict, reason: str = "PyAV is not installed (pip install 'style-transfer[video]')") -> dict:
    """``video`` of GET /v1/models as a server without PyAV sends it."""
    return {**(body.get("video") or {}), "enabled": False, "reason": reason}


def _write_video(path: Path, frames: int = 8, size: tuple[int, int] = (64, 48)) -> Path:
    """A small H.264 MP4: a colour ramp with a bar moving right, ``frames`` frames at 8 fps."""
    av = pytest.importorskip("av")
    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = 30 * i
            img[..., 2] = np.linspace(40, 220, w, dtype=np.uint8)
            img[:, i * w // frames:(i + 1) * w // frames, 1] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def video_server(playwright_factory, tmp_path_factory, free_port):
    """A tiny ordinary model beside a tiny one trained with a temporal stability term (``for_video``); videos
    up to VIDEO_MAX_BYTES."""
    pytest.importorskip("av")
    root = tmp_path_factory.mktemp("browser_video_server")
    weights = root / "weights"
    weights.mkdir()
    _write_model(weights / "tiny-instance.safetensors", "instance")
    _write_model(weights / "tiny-video.safetensors", "instance", seed=1, training={"stability_weight": 10.0})
    with _serve(weights, free_port(), root / "server.log", STYLE_TRANSFER_MAX_VIDEO_BYTES=str(VIDEO_MAX_BYTES)) as base:
        yield base


def _record_progress(page) -> None:
    """Keeps every text and value the progress bar shows in ``window.__progress`` (a job may pass a state
    between two looks)."""
    page.evaluate("""() => {
        window.__progress = [];
        const note = () => window.__progress.push({
            label: document.querySelector('#progress-label').textContent,
            time: document.querySelector('#progress-time').textContent,
            now: document.querySelector('#progress-bar').getAttribute('aria-valuenow'),
            live: document.querySelector('#progress-live').textContent,
        });
        new MutationObserver(note).observe(document.querySelector('#progress'),
            { subtree: true, childList: true, characterData: true, attributes: true });
    }""")


QUEUED = {"status": "queued", "queue_position": 1, "frames_done": 0, "progress": 0.0, "elapsed_s": 0.0,
          "eta_s": None, "result": None}
RUNNING = {"status": "running", "queue_position": None, "frames_done": 3, "frames_total": 8, "progress": 0.375,
           "elapsed_s": 1.5, "eta_s": 2.5, "result": None}


def _pretend(page, *states: dict, forever: bool = False) -> None:
    """The first polls of GET /v1/videos/ID answer ``states`` (over the real job's status, whatever the tiny,
    fast job has got to); later ones pass through, or all answer the last state with ``forever``. (The
    upload itself passes untouched: Playwright's route.fetch() would drop the file of a multipart body.)"""
    polls = iter(states)

    def poll(route):
        if route.request.method != "GET":
            route.continue_()
            return
        state = next(polls, states[-1] if forever else None)
        if state is None:
            route.continue_()
            return
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), **state})

    page.route("**/v1/videos/*", poll)


# Where the page remembers its video jobs: localStorage, under a key naming the page's path ("/" here).
JOBS_KEY = "style-transfer.video-jobs:/"


def _remembered(page) -> list[dict]:
    """The video jobs the page keeps in localStorage ([{id, model, name}])."""
    return json.loads(page.evaluate("(key) => localStorage.getItem(key) || '[]'", JOBS_KEY))


def _reload(page) -> None:
    page.reload()
    page.wait_for_selector('#status[data-state="ready"]')
    page.wait_for_selector("#models input[name=model]")


def _choose_video(page, clip: Path) -> None:
    page.set_input_files("#file-input", str(clip))
    page.wait_for_function("document.querySelector('#video-preview').readyState >= 1")


def test_models_for_video_are_tagged(browser, video_server):
    """A model trained with ``stability_weight`` is marked "for video" in the list; the others are not."""
    with _open_page(browser, video_server) as page:
        tag = page.locator('#models .model-card:has(input[value="tiny-video"]) .video-chip')
        assert tag.is_visible() and tag.inner_text() == "for video"
        assert "moving camera" in tag.get_attribute("title")
        assert page.locator('#models .model-card:has(input[value="tiny-instance"]) .video-chip').is_hidden()


def test_a_video_is_stylized_with_progress_and_can_be_downloaded(browser, video_server, tmp_path):
    clip = _write_video(tmp_path / "clip.mp4")
    with _open_page(browser, video_server) as page:
        # The picker and the drop zone offer videos.
        accept = page.get_attribute("#file-input", "accept").split(",")
        assert "image/png" in accept and "video/mp4" in accept and ".mov" in accept
        assert "video" in page.inner_text("#photo-title").lower()
        assert "MP4" in page.inner_text("#video-formats") and "195 KB" in page.inner_text("#video-formats")
        assert _checked(page) == ["tiny-instance"]  # the page's first pick, for photos

        _choose_video(page, clip)
        assert page.locator("#original-preview").is_hidden()
        assert page.evaluate("document.querySelector('#video-preview').muted") is True
        page.wait_for_function("document.querySelector('#file-meta').textContent.includes('64×48')")
        assert "clip.mp4" in page.inner_text("#file-meta")
        assert _checked(page) == ["tiny-video"]  # a video: the model made for video instead
        assert page.inner_text("#run-label") == "Stylize video"
        assert page.locator('input[name="format"][value="jpeg"]').is_disabled()  # MP4 whatever the format

        # Several models: one video, with the first selected, and the page says so.
        page.locator('#models input[value="tiny-instance"]').check()
        assert "first selected" in page.inner_text("#run-hint")
        assert "tiny-instance" in page.inner_text("#run-hint")
        page.locator('#models input[value="tiny-instance"]').uncheck()

        _pretend(page, QUEUED, RUNNING)
        _record_progress(page)
        with page.expect_request(_posted("/v1/videos")) as posted:
            page.click("#run")
        fields = _form_fields(posted.value)
        assert fields["model"] == "tiny-video" and "format" not in fields and fields["strength"] == "1"
        video = page.locator("#results .video-result video.result-video")
        video.wait_for(timeout=60_000)
        assert _error_text(page) == "", _error_text(page)

        seen = page.evaluate("window.__progress")
        labels = [s["label"] for s in seen]
        assert "Queued: 1 video ahead" in labels, labels
        running = [s for s in seen if s["label"] == "3 / 8 frames · 37%"]
        assert running and running[0]["now"] == "38", seen
        assert any(re.fullmatch(r"0:0\d elapsed · about 0:0\d left", s["time"]) for s in running), running
        assert any(s["live"] == "Stylizing the video." for s in seen), seen
        assert page.locator("#progress").is_hidden()

        # The player plays the server's MP4 (decoded here: Chromium plays H.264), seekable by Range.
        page.wait_for_function("document.querySelector('#results video.result-video').readyState >= 1",
                               timeout=30_000)
        assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [64, 48]
        assert video.evaluate("v => v.controls") is True
        src = video.get_attribute("src")
        assert re.fullmatch(r"v1/videos/[\w-]+/result", src), src
        fetched = page.evaluate("""async (src) => {
            const whole = await fetch(src);
            const bytes = new Uint8Array(await whole.arrayBuffer());
            const part = await fetch(src, { headers: { Range: 'bytes=0-15' } });
            return { status: whole.status, type: whole.headers.get('Content-Type'), size: bytes.length,
                     brand: String.fromCharCode(...bytes.slice(4, 8)), partStatus: part.status };
        }""", src)
        assert fetched["status"] == 200 and fetched["type"] == "video/mp4", fetched
        assert fetched["brand"] == "ftyp" and fetched["size"] > 1000 and fetched["partStatus"] == 206, fetched
        link = page.locator("#results .video-result a.download")
        assert link.get_attribute("download") == "clip_tiny-video.mp4"
        assert link.get_attribute("href") == src
        card = page.locator("#results .video-result")
        assert card.get_attribute("data-model") == "tiny-video"
        assert page.locator("#link-sliders").is_hidden()  # no before/after divider on a video
        assert re.search(r"64×48 · 8 frames · MP4 · no sound · kept on the server for about \d+ min",
                         card.locator(".result-info").inner_text()), card.locator(".result-info").inner_text()

        ARTIFACTS.mkdir(exist_ok=True)
        video.evaluate("v => { v.currentTime = 0.5; }")
        page.wait_for_function("(v => !v.seeking && v.readyState >= 2)(document.querySelector('#results video.result-video'))")
        page.evaluate("window.scrollTo(0, 0)")
        shot = page.screenshot(full_page=True, animations="disabled")
        (ARTIFACTS / "browser-video.png").write_bytes(shot)
        (tmp_path / "browser-video.png").write_bytes(shot)

        # Clearing the results deletes the job on the server (its files with it).
        job = src.split("/")[2]
        with page.expect_request(lambda r: r.method == "DELETE" and r.url.endswith(f"/v1/videos/{job}")) as gone:
            page.click("#clear-results")
        assert gone.value.response().status == 204
        assert page.request.get(f"{video_server}/v1/videos/{job}").status == 404
        assert page.locator("#results .video-result").count() == 0
        assert _remembered(page) == []

        # A photo afterwards runs as before.
        photo = _write_photo(tmp_path / "photo.png")
        page.set_input_files("#file-input", str(photo))
        page.wait_for_function("document.querySelector('#original-preview').naturalWidth > 0")
        assert page.locator("#video-preview").is_hidden()
        assert page.inner_text("#run-label") == "Stylize"
        assert page.locator('input[name="format"][value="jpeg"]').is_enabled()
        with page.expect_request(_posted("/v1/stylize")):
            page.click("#run")
        _wait_for_results(page, 1)


def test_a_video_job_can_be_cancelled(browser, video_server, tmp_path):
    """Cancel while the job runs sends DELETE and says so; the results shown before stay."""
    clip = _write_video(tmp_path / "clip.mp4")
    with _open_page(browser, video_server) as page:
        _choose_video(page, clip)
        _pretend(page, RUNNING, forever=True)  # it never ends by itself
        page.click("#run")
        page.wait_for_function("document.querySelector('#progress-label').textContent.includes('3 / 8 frames')")
        assert page.is_disabled("#run")
        with page.expect_request(lambda r: r.method == "DELETE" and "/v1/videos/" in r.url) as deleted:
            page.click("#cancel")
        assert deleted.value.response().status == 204
        page.wait_for_function("document.querySelector('#error').textContent.includes('Cancelled')")
        assert "files deleted" in _error_text(page)
        assert page.locator("#progress").is_hidden() and page.is_enabled("#run")
        assert page.locator("#empty-state").is_visible()
        assert _remembered(page) == []


def test_videos_refused_before_uploading(browser, video_server, tmp_path):
    """A video over the server's size limit, or any video on a server that takes none, is refused with the
    reason at once: nothing is uploaded, and the photo chosen before stays."""
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(VIDEO_MAX_BYTES + 1))
    clip = _write_video(tmp_path / "clip.mp4")
    photo = _write_photo(tmp_path / "photo.png")
    posts: list[str] = []
    with _open_page(browser, video_server) as page:
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.set_input_files("#file-input", str(photo))
        page.set_input_files("#file-input", str(big))
        assert "Video too large" in _error_text(page) and "195 KB" in _error_text(page)
        assert page.inner_text("#run-label") == "Stylize" and "photo.png" in page.inner_text("#file-meta")
        assert posts == []

    with _open_page(browser, video_server, lambda body: {**body, "video": _no_video(body)}) as page:
        assert "video/mp4" not in page.get_attribute("#file-input", "accept")
        assert page.locator("#video-formats").is_hidden()
        page.set_input_files("#file-input", str(clip))
        assert "Videos not available" in _error_text(page)
        assert "PyAV is not installed" in _error_text(page)
        assert page.is_disabled("#run")  # no file chosen


def test_a_video_job_survives_a_reload(browser, video_server, tmp_path):
    """Reloading the page while a job runs deletes nothing: the page finds the job again (remembered in
    localStorage), follows it to the end and shows its card, and shows it again on the next reload, all
    without uploading the video again; Clear then deletes it and forgets it."""
    clip = _write_video(tmp_path / "clip.mp4")
    with _open_page(browser, video_server) as page:
        sent: list[tuple[str, str]] = []
        page.on("request", lambda r: sent.append((r.method, r.url)) if r.method in ("POST", "DELETE") else None)
        _choose_video(page, clip)
        _pretend(page, RUNNING, forever=True)  # still running when the page is reloaded
        page.click("#run")
        page.wait_for_function("document.querySelector('#progress-label').textContent.includes('3 / 8 frames')")
        [entry] = _remembered(page)
        job = entry["id"]
        assert entry == {"id": job, "model": "tiny-video", "name": "clip.mp4"}

        # Reloaded while "running": the page takes the job up where it was, then shows the result.
        page.unroute("**/v1/videos/*")
        _pretend(page, RUNNING)
        _reload(page)
        page.wait_for_function("document.querySelector('#progress-label').textContent.includes('3 / 8 frames')")
        assert page.is_disabled("#run") and page.is_visible("#cancel")
        video = page.locator("#results .video-result video.result-video")
        video.wait_for(timeout=60_000)
        assert _error_text(page) == "", _error_text(page)
        assert page.locator("#progress").is_hidden()

        # Closed and opened again (a reload, the job long done): the card straight away.
        page.unroute("**/v1/videos/*")
        _reload(page)
        video.wait_for(timeout=30_000)
        page.wait_for_function("document.querySelector('#results video.result-video').readyState >= 1",
                               timeout=30_000)
        assert video.evaluate("v => [v.videoWidth, v.videoHeight]") == [64, 48]
        assert video.get_attribute("src") == f"v1/videos/{job}/result"
        link = page.locator("#results .video-result a.download")
        assert link.get_attribute("download") == "clip_tiny-video.mp4"
        assert link.get_attribute("href") == f"v1/videos/{job}/result"
        assert re.search(r"kept on the server for about \d+ min",
                         page.inner_text("#results .video-result .result-info"))
        assert "clip.mp4" in video.get_attribute("aria-label")
        assert page.locator("#link-sliders").is_hidden()
        assert page.is_visible("#clear-results")
        assert _error_text(page) == "", _error_text(page)
        assert page.locator("#progress").is_hidden()
        # One upload, and nothing deleted by leaving the page.
        assert [m for m, url in sent if url.endswith("/v1/videos")] == ["POST"], sent
        assert not [url for m, url in sent if m == "DELETE"], sent
        assert [e["id"] for e in _remembered(page)] == [job]

        with page.expect_request(lambda r: r.method == "DELETE" and r.url.endswith(f"/v1/videos/{job}")) as gone:
            page.click("#clear-results")
        assert gone.value.response().status == 204
        assert _remembered(page) == []
        _reload(page)
        page.wait_for_timeout(500)
        assert page.locator("#results .video-result").count() == 0
        assert page.locator("#empty-state").is_visible() and page.locator("#link-sliders").is_visible()


def test_remembered_jobs_the_server_no_longer_knows_or_that_failed(browser, video_server):
    """A remembered id the server answers 404 for (expired, deleted, a restarted server) is forgotten
    without a word; a job that failed meanwhile says why once, and is forgotten."""
    unknown, failed = "0" * 32, "f" * 32
    with _open_page(browser, video_server) as page:
        page.evaluate("([key, list]) => localStorage.setItem(key, JSON.stringify(list))",
                      [JOBS_KEY, [{"id": unknown, "model": "tiny-video", "name": "old.mp4"}]])
        with page.expect_response(lambda r: r.url.endswith(f"/v1/videos/{unknown}")) as asked:
            _reload(page)
        assert asked.value.status == 404
        page.wait_for_function("(key) => localStorage.getItem(key) === null", arg=JOBS_KEY)
        assert _error_text(page) == "" and page.locator("#error").is_hidden()
        assert page.locator("#results .video-result").count() == 0 and page.locator("#progress").is_hidden()

        def failed_job(route):
            if route.request.method != "GET":
                route.continue_()  # the page deletes it: the server answers 404, which is fine
                return
            route.fulfill(json={"id": failed, "status": "failed", "model": "tiny-video", "style": "test-style",
                                "filename": "broken_tiny-video.mp4", "frames_done": 2, "frames_total": 8,
                                "progress": 0.25, "queue_position": None, "elapsed_s": 1.0, "eta_s": None,
                                "error": {"code": "video_failed", "message": "the video failed: bad frame 3"},
                                "result": None, "expires_in_s": 3000.0, "width": 64, "height": 48,
                                "audio": None})

        page.route(f"**/v1/videos/{failed}", failed_job)
        page.evaluate("([key, list]) => localStorage.setItem(key, JSON.stringify(list))",
                      [JOBS_KEY, [{"id": failed, "model": "tiny-video", "name": "broken.mp4"}]])
        _reload(page)
        page.wait_for_function("document.querySelector('#error').textContent.includes('Video failed')")
        assert "broken.mp4" in _error_text(page) and "bad frame 3" in _error_text(page)
        assert "video_failed" in _error_text(page)
        page.wait_for_function("(key) => localStorage.getItem(key) === null", arg=JOBS_KEY)
        _reload(page)  # once only
        page.wait_for_timeout(500)
        assert page.locator("#error").is_hidden()


def test_a_job_followed_after_a_reload_can_be_cancelled(browser, video_server, tmp_path):
    """Cancel on a job taken up again after a reload sends DELETE, as on the run that started it, and the
    page forgets the job."""
    clip = _write_video(tmp_path / "clip.mp4")
    with _open_page(browser, video_server) as page:
        _choose_video(page, clip)
        _pretend(page, RUNNING, forever=True)  # it never ends by itself, before the reload and after
        page.click("#run")
        page.wait_for_function("document.querySelector('#progress-label').textContent.includes('3 / 8 frames')")
        [entry] = _remembered(page)
        _reload(page)
        page.wait_for_function("document.querySelector('#progress-label').textContent.includes('3 / 8 frames')")
        with page.expect_request(lambda r: r.method == "DELETE" and r.url.endswith(f"/v1/videos/{entry['id']}")) as deleted:
            page.click("#cancel")
        assert deleted.value.response().status == 204
        page.wait_for_function("document.querySelector('#error').textContent.includes('Cancelled')")
        assert "files deleted" in _error_text(page)
        assert page.locator("#progress").is_hidden() and page.locator("#empty-state").is_visible()
        assert _remembered(page) == []
