"""The page at `/`, in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, which .ci/run installs) drives the running server as a person would: types a
sentence, submits, reads the five rendered percentages and compares them with the Predictor's,
then the same with two sentences (and sees the reason of a refused request); on a phone-width
screen (390 px, no sideways scrolling) and a desktop one, with a screenshot of each in the
test's directory. Served with an API key, the page asks for it once (a wrong one again).

    python -m pytest -q tests/inference/test_serve_page.py --serve-checkpoint /work/runs/main --screenshots-to docs/pictures

serves a real run instead of the tiny one and copies the screenshots into the docs.
"""

import os
import shutil
from pathlib import Path

import pytest
from conftest import serving

from minbert import Predictor
from minbert.inference.serve import Limits, create_app

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SENTENCE = "a gorgeous, witty and moving film"
PAIR = ("How do I learn to cook rice?", "What is the best way to cook rice?")
WAIT_S = 30


def need(condition: bool, why: str) -> None:
    """Where the browser is missing: a skip on a developer's machine, a failure in CI (.ci/run installs it)."""
    if not condition:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{why}: apt-get install chromium chromium-driver")


@pytest.fixture(scope="module")
def predictor(request):
    run = request.config.getoption("--serve-checkpoint") or request.getfixturevalue("tiny_runs")["cross"]
    return Predictor.load(run)


@pytest.fixture(scope="module")
def browser():
    need(CHROMIUM is not None and Path(CHROMEDRIVER).exists(), "no chromium or chromedriver on PATH")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        need(False, "selenium is not installed (pip install -r requirements-test.txt)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path given too, Selenium looks nothing up online
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800",
                 "--hide-scrollbars", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    yield driver
    driver.quit()


def screen(driver, width: int, height: int, mobile: bool) -> None:
    """The viewport: width x height CSS pixels; `mobile` as a phone does (the viewport meta tag counts)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})  # fmt: skip


def submit_and_wait(driver, fields: dict[str, str], button: str, result: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    for element_id, text in fields.items():
        box = driver.find_element(By.ID, element_id)
        box.clear()
        box.send_keys(text)
    driver.find_element(By.ID, button).click()
    box = driver.find_element(By.ID, result)
    WebDriverWait(driver, WAIT_S).until(lambda d: box.get_attribute("data-state") in ("done", "error"))
    error = driver.find_element(By.ID, result.replace("result", "error")).text
    assert box.get_attribute("data-state") == "done", f"the page shows an error: {error}"


def text_of(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def shoot(driver, request, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 10_000
    copy_to = request.config.getoption("--screenshots-to")
    if copy_to:  # asked for by hand: the pictures in docs/ are made this way
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(copy_to) / name)
    return path


def test_the_page_shows_the_predictors_answers_on_a_phone_and_a_desktop(browser, predictor, request, tmp_path):
    from selenium.webdriver.common.by import By

    with serving(create_app(predictor, Limits(max_chars=200))) as url:
        screen(browser, 390, 844, mobile=True)
        browser.get(url + "/")
        assert browser.title == "minbert"
        assert not browser.find_element(By.ID, "key-form").is_displayed()  # no key wanted: none asked for

        with pytest.raises(AssertionError, match="at most 200 characters"):  # a refused request: its reason shows
            submit_and_wait(browser, {"sentence": "x" * 201}, "sentiment-submit", "sentiment-result")

        submit_and_wait(browser, {"sentence": SENTENCE}, "sentiment-submit", "sentiment-result")
        (expected,) = predictor.sentiment([SENTENCE])
        shown = [text_of(browser, f"sst-p-{k}") for k in range(5)]
        assert shown == [f"{100 * p:.1f}%" for p in expected.probabilities]  # as displayed: 0.1 %
        assert text_of(browser, "sentiment-verdict").startswith(f"{expected.name} (label {expected.label})")

        submit_and_wait(browser, {"pair-a": PAIR[0], "pair-b": PAIR[1]}, "pair-submit", "pair-result")
        (para,), (score,) = predictor.paraphrase([PAIR]), predictor.similarity([PAIR])
        assert text_of(browser, "para-probability") == f"{100 * para.probability:.1f}%"
        assert text_of(browser, "para-decision") == ("paraphrase" if para.positive else "not a paraphrase")
        assert text_of(browser, "sts-score") == f"{score:.2f}"

        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390  # no sideways scrolling
        height = browser.execute_script("return document.documentElement.scrollHeight")
        screen(browser, 390, max(844, height), mobile=True)  # the whole page, as a phone would scroll through it
        shoot(browser, request, tmp_path, "serve-phone.png")

        screen(browser, 1200, 800, mobile=False)
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 1200
        assert text_of(browser, "sst-p-0") == shown[0]  # the answers stay on the page
        shoot(browser, request, tmp_path, "serve-desktop.png")


def test_the_page_asks_any_task_of_the_model(browser, four_task_run, tmp_path, request):
    """A four-task model: the "Any task" card offers each of its tasks (CFIMDB, declared in YAML,
    included) and shows the Predictor's answer by the task's kind."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    four = Predictor.load(four_task_run)
    with serving(create_app(four)) as url:
        screen(browser, 1200, 900, mobile=False)
        browser.get(url + "/")
        choice = Select(browser.find_element(By.ID, "task"))
        WebDriverWait(browser, WAIT_S).until(lambda d: choice.options)  # filled from /v1/model once it answers
        assert [o.get_attribute("value") for o in choice.options] == ["sst", "para", "sts", "cfimdb"]
        choice.select_by_value("cfimdb")
        assert not browser.find_element(By.ID, "task-b").is_displayed()  # one text for CFIMDB
        submit_and_wait(browser, {"task-a": SENTENCE}, "task-submit", "task-result")
        (review,) = four.predict("cfimdb", [SENTENCE]).results
        verdict = text_of(browser, "task-verdict")
        assert verdict.startswith("positive" if review.positive else "negative"), verdict
        assert f"{100 * review.probability:.1f}%" in text_of(browser, "task-bars")
        choice.select_by_value("sts")
        submit_and_wait(browser, {"task-a": PAIR[0], "task-b": PAIR[1]}, "task-submit", "task-result")
        (score,) = four.similarity([PAIR])
        assert text_of(browser, "task-verdict").startswith(f"score {score:.3f}")
        shoot(browser, request, tmp_path, "serve-any-task.png")


KEY = "page-test-key-0123456789"


def test_the_page_asks_for_the_api_key_once_and_sends_it(browser, predictor, request, tmp_path):
    """Served with a key: the page shows the key field (GET /v1/model said 401) and no model; a wrong
    key is refused and asked for again; the right one fills the page, is sent with each question,
    and is not asked for again on a reload (sessionStorage, this tab only)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def give_key(key: str) -> None:
        form = browser.find_element(By.ID, "key-form")
        WebDriverWait(browser, WAIT_S).until(lambda d: form.is_displayed())
        browser.find_element(By.ID, "api-key").send_keys(key)
        browser.find_element(By.ID, "key-submit").click()

    with serving(create_app(predictor, Limits(), api_key=KEY)) as url:
        screen(browser, 390, 844, mobile=True)
        browser.get(url + "/")
        give_key("not-the-key-0123456789")
        WebDriverWait(browser, WAIT_S).until(lambda d: "wrong" in text_of(d, "key-error"))
        assert text_of(browser, "key-error") == "401: the API key is wrong"
        assert text_of(browser, "model-info") == "Model: give the API key to see it"
        shoot(browser, request, tmp_path, "serve-key.png")
        give_key(KEY)
        WebDriverWait(browser, WAIT_S).until(lambda d: str(predictor.source) in text_of(d, "model-info"))
        assert not browser.find_element(By.ID, "key-form").is_displayed()
        submit_and_wait(browser, {"sentence": SENTENCE}, "sentiment-submit", "sentiment-result")
        (expected,) = predictor.sentiment([SENTENCE])
        assert [text_of(browser, f"sst-p-{k}") for k in range(5)] == [f"{100 * p:.1f}%" for p in expected.probabilities]

        browser.refresh()  # asked once: the tab keeps the key
        WebDriverWait(browser, WAIT_S).until(lambda d: str(predictor.source) in text_of(d, "model-info"))
        assert not browser.find_element(By.ID, "key-form").is_displayed()
        submit_and_wait(browser, {"pair-a": PAIR[0], "pair-b": PAIR[1]}, "pair-submit", "pair-result")
        (score,) = predictor.similarity([PAIR])
        assert text_of(browser, "sts-score") == f"{score:.2f}"
        shoot(browser, request, tmp_path, "serve-key-done.png")


def test_the_page_shows_the_model_card_once_the_key_is_given(browser, predictor, request, tmp_path):
    """The "Model card" section: hidden while the server refuses /v1/card (no key yet), then the
    facts of the card (model_card.card_facts): each task's dev score as stored with the weights,
    the base model, the license left to fill in, the data files, the limitations."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from minbert.inference.model_card import card_facts

    facts = card_facts(predictor.record)
    with serving(create_app(predictor, Limits(), api_key=KEY)) as url:
        screen(browser, 1200, 900, mobile=False)
        browser.get(url + "/")
        browser.execute_script("sessionStorage.clear()")  # each server has its own port: no key kept, but be sure
        browser.refresh()
        form = browser.find_element(By.ID, "key-form")
        WebDriverWait(browser, WAIT_S).until(lambda d: form.is_displayed())
        card = browser.find_element(By.ID, "card-section")
        assert not card.is_displayed()  # 401: nothing of the model shown
        browser.find_element(By.ID, "api-key").send_keys(KEY)
        browser.find_element(By.ID, "key-submit").click()
        WebDriverWait(browser, WAIT_S).until(lambda d: card.is_displayed())
        rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                for tr in browser.find_elements(By.CSS_SELECTOR, "#card-scores tr")[1:]]  # fmt: skip
        assert rows[:-1] == [[t, facts_task["dataset"], facts_task["metric"], f"{predictor.dev_scores[t]:.4f}"]
                             for t, facts_task in zip(predictor.tasks, facts["tasks"])]  # fmt: skip
        assert rows[-1][0] == "overall" and rows[-1][-1] == f"{predictor.dev_scores['overall']:.4f}"
        assert text_of(browser, "card-base") == facts["base_model"]
        assert text_of(browser, "card-license").startswith("not set: left empty for you to fill in")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#card-limitations li")) == len(facts["limitations"])
        assert "ids-sst-train.csv" in text_of(browser, "card-data")
        assert "Predictor.load(" in text_of(browser, "card-usage")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 1200
        height = browser.execute_script("return document.documentElement.scrollHeight")
        screen(browser, 1200, height, mobile=False)
        shoot(browser, request, tmp_path, "serve-card.png")
        screen(browser, 390, 844, mobile=True)
        assert browser.execute_script("return document.documentElement.scrollWidth") <= 390  # phones too
        screen(browser, 390, browser.execute_script("return document.documentElement.scrollHeight"), mobile=True)
        shoot(browser, request, tmp_path, "serve-card-phone.png")
