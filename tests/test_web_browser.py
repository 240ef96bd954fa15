"""The dashboard in a real headless browser (Debian's chromium + chromium-driver), as an
operator uses it: sign in with a token, see the jobs, open one, compare its chart with
GetValues, preview a change, apply it, find it in the audit trail; a job-scoped token
sees only its jobs and no admin actions; hostile strings show as text.

One server and one browser for the module. Screenshots of each page go to
``tests/artifacts/`` (git-ignored)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from web_harness import ADMIN, TEAM_A, Dashboard, dashboard

ARTIFACTS = Path(__file__).parent / "artifacts"
HOSTILE = '<img src=x onerror="document.title=\'pwned\'"><b>bold</b></td><script>x=1</script>'
HOSTILE_NAME = "<i>ops</i>&amp;"
HOSTILE_PARAM = '<img src=x onerror="document.title=1">p'
HOSTILE_TOKEN = "hostile-token-0123456789abcdef"
TOKENS = json.dumps({"tokens": [
    {"name": "platform", "token": ADMIN, "role": "admin"},
    {"name": "team-a", "token": TEAM_A, "job_prefixes": ["team-a-"]},
    {"name": HOSTILE_NAME, "token": HOSTILE_TOKEN, "role": "admin"},
]})
JOBS = {
    "team-a-resnet": {"progress": {0: 35, 1: 31}},
    "team-a-vit.large_2": {"progress": {0: 12, 1: 12}, "max_jump_factor": 2.0},
    "job-bert": {"progress": {0: 64, 1: 60}, "bounds": {"lr": [0.0, 0.2]}},
    "job-gpt_small": {"progress": {}},
    # A param_groups key is the job's own string: it must show as text everywhere.
    "job-hostile": {"progress": {0: 3, 1: 3}, "cfg": [dict(
        type="LinearParamScheduler", param_name=HOSTILE_PARAM, start_factor=0.5, by_epoch=False,
        end=50)], "groups": [{"lr": 0.1, HOSTILE_PARAM: 1.0}, {"lr": 0.1, HOSTILE_PARAM: 2.0}]},
}


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("needs Debian's chromium and chromium-driver: `make test` installs them "
                    "(apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    with dashboard(tmp_path_factory.mktemp("web"), tokens=False, tokens_inline=TOKENS) as d:
        d.token = ADMIN
        for job_id, extra in JOBS.items():
            d.make_job(job_id, **extra)
        yield d


@pytest.fixture(scope="module")
def browser(ui: Dashboard) -> Iterator[WebDriver]:
    binary, driver_path = chromium()
    options = Options()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1100", "--disable-extensions"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, condition: Any, timeout: float = 15) -> Any:
    return WebDriverWait(driver, timeout).until(condition)


def shot(driver: WebDriver, name: str) -> None:
    for _ in range(2):  # the page reflows at the new size: measure again
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(max(1100, int(height) + 140), 5000))
    driver.save_screenshot(str(ARTIFACTS / f"web-{name}.png"))
    driver.set_window_size(1400, 1100)


def sign_in(driver: WebDriver, ui: Dashboard, token: str) -> None:
    driver.get(ui.url + "/#/")
    field = wait(driver, ec.presence_of_element_located((By.ID, "token")))
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "token-use").click()
    wait(driver, lambda d: "signed in as" in d.find_element(By.ID, "whoami").text)


def rows(driver: WebDriver) -> list[str]:
    return [r.get_attribute("data-job-id") for r in
            driver.find_elements(By.CSS_SELECTOR, "#jobs tr[data-job-id]")]


def open_job(driver: WebDriver, job_id: str) -> None:
    driver.get(driver.current_url.split("#")[0] + "#/")
    link = wait(driver, ec.element_to_be_clickable(
        (By.CSS_SELECTOR, f'tr[data-job-id="{job_id}"] a.job-link')))
    link.click()
    wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "svg.chart g.series")))


def series(driver: WebDriver, css: str) -> dict[int, tuple[list[int], list[float]]]:
    found = {}
    for g in driver.find_elements(By.CSS_SELECTOR, css):
        its = [int(x) for x in (g.get_attribute("data-iterations") or "").split()]
        values = [float(x) for x in (g.get_attribute("data-values") or "").split()]
        assert int(g.get_attribute("data-count") or -1) == len(values) == len(its)
        found[int(g.get_attribute("data-group") or -1)] = (its, values)
    return found


def csp_violations(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser")
            if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]


# -- the tests, in the order an operator goes --------------------------------------------
def test_a_page_without_a_token_asks_for_one(browser: WebDriver, ui: Dashboard):
    browser.get(ui.url + "/")
    wait(browser, lambda d: "token is needed" in d.find_element(By.ID, "whoami").text)
    assert not rows(browser)
    assert "token" not in browser.current_url.split("#")[0].split("/", 3)[-1]


def test_the_jobs_page_lists_every_job_with_its_state_and_values(browser: WebDriver,
                                                                 ui: Dashboard):
    sign_in(browser, ui, ADMIN)
    wait(browser, lambda d: len(rows(d)) == len(JOBS))
    assert sorted(rows(browser)) == sorted(JOBS)
    bert = browser.find_element(By.CSS_SELECTOR, 'tr[data-job-id="job-bert"]')
    assert "running" in bert.text and "64 / 100" in bert.text and "spread 4" in bert.text
    assert "lr=" in bert.find_element(By.CSS_SELECTOR, "td.values").text
    fresh = browser.find_element(By.CSS_SELECTOR, 'tr[data-job-id="job-gpt_small"]')
    assert fresh.get_attribute("data-state") == "new"
    assert stored_token(browser) == ADMIN  # sessionStorage, not a URL
    shot(browser, "jobs")


def stored_token(driver: WebDriver) -> str:
    return driver.execute_script("return sessionStorage.getItem('paramsched.token')")


def test_the_prefix_filter_and_live_refresh(browser: WebDriver, ui: Dashboard):
    box = browser.find_element(By.ID, "prefix")
    box.send_keys("team-a-")
    wait(browser, lambda d: sorted(rows(d)) == ["team-a-resnet", "team-a-vit.large_2"])
    job = ui.make_job("team-a-resnet", progress={0: 40, 1: 40})  # the ranks report on
    wait(browser, lambda d: "40 / 100" in d.find_element(
        By.CSS_SELECTOR, 'tr[data-job-id="team-a-resnet"]').text, timeout=20)
    assert job.generation == 1
    box.clear()
    box.send_keys(" ")  # an input event; a prefix of one space matches nothing
    wait(browser, lambda d: not rows(d))
    box.clear()
    box.send_keys("t")
    wait(browser, lambda d: sorted(rows(d)) == ["team-a-resnet", "team-a-vit.large_2"])
    box.send_keys(Keys.BACKSPACE)  # no prefix again: every job
    wait(browser, lambda d: len(rows(d)) == len(JOBS))


def test_a_job_page_charts_exactly_the_values_of_get_values(browser: WebDriver,
                                                             ui: Dashboard):
    open_job(browser, "job-bert")
    plan = ui.get_values("job-bert")
    params, width = list(plan.params), plan.num_groups * len(plan.params)
    for k, param in enumerate(params):
        drawn = series(browser, f'svg.chart[data-param="{param}"] g.series')
        assert sorted(drawn) == list(range(plan.num_groups))
        for g, (its, values) in drawn.items():
            assert its == list(range(plan.start_iteration,
                                     plan.start_iteration + plan.num_iterations))
            expected = [plan.values[i * width + g * len(params) + k]
                        for i in range(plan.num_iterations)]
            assert values == expected
    chart = browser.find_element(By.CSS_SELECTOR, 'svg.chart[data-param="lr"]')
    kinds = {m.get_attribute("data-kind") for m in chart.find_elements(By.CSS_SELECTOR, ".mark")}
    assert {"epoch", "issued", "end"} <= kinds
    assert chart.find_elements(By.CSS_SELECTOR, "polyline.handed-out")
    assert chart.find_elements(By.CSS_SELECTOR, "polyline.planned")
    ranks = browser.find_elements(By.CSS_SELECTOR, "#ranks tr[data-rank]")
    assert [r.text.split()[:3] for r in ranks] == [["0", "64", "0"], ["1", "60", "4"]]
    assert browser.find_elements(By.ID, "change-form")  # an admin may change it
    shot(browser, "job")


def test_a_hostile_param_name_is_shown_as_text(browser: WebDriver, ui: Dashboard):
    browser.get(ui.url + "/#/")
    row = wait(browser, ec.presence_of_element_located(
        (By.CSS_SELECTOR, 'tr[data-job-id="job-hostile"]')))
    html = row.get_attribute("outerHTML") or ""
    assert "<img" not in html and "&lt;img" in html and HOSTILE_PARAM in row.text
    open_job(browser, "job-hostile")
    cards = browser.find_elements(By.CSS_SELECTOR, "#charts .chart-card")
    assert [c.get_attribute("data-param") for c in cards] == [HOSTILE_PARAM]
    assert cards[0].find_element(By.CSS_SELECTOR, "h3").text == HOSTILE_PARAM
    options = browser.find_elements(By.CSS_SELECTOR, "#change-param option")
    assert [o.get_attribute("value") for o in options] == [HOSTILE_PARAM, "lr"]
    assert not browser.find_elements(By.CSS_SELECTOR, "main img")
    assert browser.title == "paramsched"
    drawn = series(browser, "#charts svg.chart g.series")
    plan = ui.get_values("job-hostile")
    assert list(plan.params) == [HOSTILE_PARAM]
    assert drawn[1][1] == list(plan.values[1::2]) and drawn[1][1][0] == 1.0  # 2.0 x 0.5
    shot(browser, "hostile-param")


def test_a_refused_change_shows_the_guardrail(browser: WebDriver, ui: Dashboard):
    open_job(browser, "job-bert")
    Select(browser.find_element(By.ID, "change-kind")).select_by_value("set")
    value = browser.find_element(By.CSS_SELECTOR, 'label[data-field="value"] input')
    value.send_keys("5")
    browser.find_element(By.ID, "change-preview").click()
    error = wait(browser, ec.visibility_of_element_located((By.ID, "change-error")))
    assert "outside the job's bounds" in error.text and "bounds.lr" in error.text
    assert browser.find_element(By.ID, "change-apply").get_attribute("disabled") is not None
    shot(browser, "refused")


def test_preview_shows_both_curves_then_apply_lands_in_the_audit_trail(browser: WebDriver,
                                                                        ui: Dashboard):
    before = len(ui.request("/api/v1/jobs/job-bert/history")[2]["entries"])
    Select(browser.find_element(By.ID, "change-kind")).select_by_value("decay")
    browser.find_element(By.CSS_SELECTOR, 'label[data-field="to"] input').send_keys("0.001")
    browser.find_element(By.CSS_SELECTOR, 'label[data-field="over"] input').send_keys("20")
    browser.find_element(By.ID, "change-reason").send_keys(HOSTILE)
    browser.find_element(By.ID, "change-preview").click()
    wait(browser, ec.presence_of_element_located((By.ID, "change-preview-result")))
    preview = '#change-preview-result svg.chart[data-param="lr"]'
    old = series(browser, preview + " g.series.before")
    new = series(browser, preview + " g.series.after")
    assert sorted(old) == sorted(new) == [0, 1]
    its, after = new[0]
    assert its[0] >= 64 and its == old[0][0]
    assert after != old[0][1] and abs(after[-1] - 0.001) < 1e-12  # decayed to 0.001, held
    assert len(ui.request("/api/v1/jobs/job-bert/history")[2]["entries"]) == before  # dry run
    shot(browser, "preview")
    browser.find_element(By.ID, "change-apply").click()
    wait(browser, ec.presence_of_element_located((By.ID, "change-applied")))
    first = wait(browser, lambda d: next(iter(
        d.find_elements(By.CSS_SELECTOR, '#audit tr.audit[data-action="decay"]')), False))
    reason = first.find_element(By.CSS_SELECTOR, ".reason")
    assert reason.text == HOSTILE  # shown as text: not parsed as markup
    assert not first.find_elements(By.CSS_SELECTOR, "b, img, script")
    assert "platform" in first.text
    assert browser.title == "paramsched"
    chart = browser.find_element(By.CSS_SELECTOR, '#charts svg.chart[data-param="lr"]')
    assert chart.find_elements(By.CSS_SELECTOR, '.mark[data-kind="change"]')
    lr = series(browser, '#charts svg.chart[data-param="lr"] g.series')[0][1]
    assert abs(lr[-1] - 0.001) < 1e-12  # the job's curve now ends at the decayed value
    shot(browser, "applied")


def test_a_scoped_token_sees_only_its_jobs_and_no_admin_actions(browser: WebDriver,
                                                                ui: Dashboard):
    browser.find_element(By.ID, "token-forget").click()
    sign_in(browser, ui, TEAM_A)
    wait(browser, lambda d: sorted(rows(d)) == ["team-a-resnet", "team-a-vit.large_2"])
    shot(browser, "scoped-jobs")
    open_job(browser, "team-a-resnet")
    assert not browser.find_elements(By.ID, "change-form")
    browser.get(ui.url + "/#/jobs/job-bert")  # another team's job, by its URL
    error = wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, ".error")))
    assert "may not access job 'job-bert'" in error.text
    assert not browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    shot(browser, "scoped-denied")


def test_a_hostile_principal_name_is_text_and_no_csp_violation(browser: WebDriver,
                                                               ui: Dashboard):
    browser.find_element(By.ID, "token-forget").click()
    sign_in(browser, ui, HOSTILE_TOKEN)
    who = browser.find_element(By.ID, "whoami")
    assert who.text == f"signed in as {HOSTILE_NAME} (admin)"
    assert not who.find_elements(By.CSS_SELECTOR, "i")
    assert csp_violations(browser) == []
    assert browser.title == "paramsched"
