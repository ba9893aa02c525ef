"""The server's HTTP side (``--http-port``): Prometheus metrics scraped and parsed with the
Prometheus text parser, the dashboard's JSON, its token, and the dashboard page driven in a
real headless Chromium against a real server with a running study."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import pytest

import promptbo
from promptbo.errors import NotFoundError
from promptbo.server.app import ServerOptions, create_server


@pytest.fixture
def served(tmp_path):
    server, port, manager = create_server(f"sqlite:///{tmp_path / 'h.db'}",
                                          ServerOptions(port=0, http_port=0))
    client = promptbo.Client(f"127.0.0.1:{port}")
    yield client, f"http://127.0.0.1:{server.http.port}"
    client.close()
    server.stop(0).wait(10)
    manager.close()


def fetch(url: str, token: str = "") -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token
                                 else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_rpcs_by_method_and_code_and_report_studies(served):
    client, base = served
    study = client.create_study("m", promptbo.SoftPromptSpace(1, 2), strategy="random",
                                max_trials=3)
    for trial in study.ask(3):
        study.tell(trial, 0.5)
    with pytest.raises(NotFoundError):
        client.get_study("nope")
    # An aborted call's status reaches the client before the server's handler unwinds and
    # counts it, so the count is read until it shows (bounded).
    failed = ("promptbo_rpc_total", (("code", "NOT_FOUND"), ("method", "GetStudy")))
    deadline = time.monotonic() + 10
    while True:
        status, body = fetch(f"{base}/metrics")
        assert status == 200
        got = samples(body.decode())
        if failed in got or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got[("promptbo_rpc_total", (("code", "OK"), ("method", "CompleteTrial")))] == 3
    assert got[("promptbo_rpc_total", (("code", "NOT_FOUND"), ("method", "GetStudy")))] == 1
    assert got[("promptbo_rpc_seconds_count", (("method", "SuggestTrials"),))] == 1
    assert got[("promptbo_rpc_seconds_bucket", (("le", "+Inf"), ("method", "CompleteTrial")))] == 3
    assert got[("promptbo_studies", (("state", "completed"),))] == 1
    assert got[("promptbo_trials", (("state", "completed"),))] == 3


def test_metrics_time_suggestions_and_gp_fits_and_count_expired_leases(served):
    client, base = served
    # Two Sobol points, then three suggestions that each fit the GP.
    gp = client.create_study("g", promptbo.SoftPromptSpace(1, 2), strategy="gp",
                             strategy_options={"num_initial": 2}, max_trials=5)
    for i in range(5):
        (trial,) = gp.ask(1)
        gp.tell(trial, float(i % 3) - float(abs(trial.prompt.vector).sum()))
    # A lease of the server's minimum lapses and the trial goes to another client.
    short = client.create_study("l", promptbo.SoftPromptSpace(1, 2), strategy="random",
                                lease_seconds=ServerOptions().limits.min_lease_seconds)
    (first,) = short.ask(1, client_id="a")
    time.sleep(ServerOptions().limits.min_lease_seconds + 0.2)
    (again,) = short.ask(1, client_id="b")
    assert again.id == first.id
    status, body = fetch(f"{base}/metrics")
    assert status == 200
    got = samples(body.decode())
    assert got[("promptbo_suggestion_seconds_count", (("strategy", "gp"),))] == 5
    assert got[("promptbo_suggestion_seconds_count", (("strategy", "random"),))] == 1
    assert got[("promptbo_suggestion_seconds_sum", (("strategy", "gp"),))] > 0
    assert got[("promptbo_gp_fit_seconds_count", (("strategy", "gp"),))] == 3
    assert got[("promptbo_gp_fit_seconds_bucket", (("le", "+Inf"), ("strategy", "gp")))] == 3
    assert ("promptbo_gp_fit_seconds_count", (("strategy", "random"),)) not in got
    assert got[("promptbo_leases_expired_total", ())] == 1


def test_metrics_count_background_prefetch_suggestions_and_fits(tmp_path):
    server, port, manager = create_server(
        "memory:", ServerOptions(port=0, http_port=0, prefetch=1))
    client = promptbo.Client(f"127.0.0.1:{port}")
    try:
        study = client.create_study("p", promptbo.SoftPromptSpace(1, 2), strategy="gp",
                                    strategy_options={"num_initial": 2}, max_trials=10)
        for trial in study.ask(2):
            study.tell(trial, -float(abs(trial.prompt.vector).sum()))
        (third,) = study.ask(1)  # its refill fits the GP on the two results
        study.tell(third, -float(abs(third.prompt.vector).sum()))
        study.ask(1)  # a GP fit on three results, by a refill or in this request
        base = f"http://127.0.0.1:{server.http.port}"
        deadline = time.monotonic() + 60
        while True:
            got = samples(fetch(f"{base}/metrics")[1].decode())
            computed = got.get(("promptbo_suggestion_seconds_count", (("strategy", "gp"),)), 0)
            fits = got.get(("promptbo_gp_fit_seconds_count", (("strategy", "gp"),)), 0)
            if (computed >= 4 and fits >= 1) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        # The first ask computes inline and every ask starts a refill: 1 + 3 batches.
        assert computed >= 4
        assert fits >= 1
    finally:
        client.close()
        server.stop(0).wait(10)
        manager.close()


def test_dashboard_json_is_snake_case_and_read_only(served):
    client, base = served
    study = client.create_study("j", promptbo.SoftPromptSpace(1, 2), strategy="random",
                                labels={"promptbo.setup/evaluator": "python"})
    (trial,) = study.ask(1)
    study.tell(trial, 0.25, {"accuracy": 0.5})
    status, body = fetch(f"{base}/api/studies")
    assert status == 200
    (listed,) = json.loads(body)
    assert listed["name"] == "j" and listed["completed_count"] == 1
    status, body = fetch(f"{base}/api/studies/j")
    detail = json.loads(body)
    assert detail["study"]["spec"]["labels"] == {"promptbo.setup/evaluator": "python"}
    assert detail["trials"][0]["id"] == trial.id
    assert detail["trials"][0]["metrics"] == {"accuracy": 0.5}
    assert "vector" not in detail["trials"][0]["prompt"]
    assert fetch(f"{base}/api/studies/nope")[0] == 404


def test_dashboard_json_marks_transferred_trials(served):
    client, base = served
    source = client.create_study("src", promptbo.SoftPromptSpace(1, 2), strategy="random")
    for trial in source.ask(3):
        source.tell(trial, float(trial.id))
    target = client.create_study("tgt", promptbo.SoftPromptSpace(1, 2), strategy="random",
                                 transfer_from=["src"])
    target.ask(1)
    detail = json.loads(fetch(f"{base}/api/studies/tgt")[1])
    assert [t["source"] for t in detail["trials"]] == ["transfer"]
    assert detail["study"]["spec"]["transfer_from"] == ["src"]


def test_the_http_side_honours_the_auth_token(tmp_path):
    server, port, manager = create_server(
        "memory:", ServerOptions(port=0, http_port=0, auth_token="s3cret"))
    base = f"http://127.0.0.1:{server.http.port}"
    try:
        assert fetch(f"{base}/metrics")[0] == 401
        assert fetch(f"{base}/api/studies", token="wrong")[0] == 401
        assert fetch(f"{base}/api/studies", token="s3cret") == (200, b"[]")
        assert fetch(f"{base}/api/studies?token=s3cret") == (200, b"[]")
        assert fetch(f"{base}/metrics", token="s3cret")[0] == 200
        assert fetch(f"{base}/")[0] == 200  # the page holds no data; it passes ?token= on
    finally:
        server.stop(0).wait(10)
        manager.close()


def _chromium():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        reason = ("the dashboard test needs Debian's chromium and chromium-driver "
                  "(apt-get install -y chromium chromium-driver)")
        if os.environ.get("PROMPTBO_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    pytest.importorskip("selenium", reason="the dashboard test needs selenium (pip install)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
def test_dashboard_in_a_real_browser_follows_a_running_study(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client, base = served
    study = client.create_study("live", promptbo.SoftPromptSpace(2, 3), strategy="random",
                                max_trials=12)
    stop = threading.Event()

    def work() -> None:  # a worker that keeps the study running while the page is open
        while not stop.is_set():
            trials = study.ask(1)
            if not trials:
                return
            v = -float(abs(trials[0].prompt.vector).sum())
            study.tell(trials[0], v, {"size": -v})
            time.sleep(0.3)

    thread = threading.Thread(target=work, daemon=True)
    browser = _chromium()
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(f"{base}/")
        link = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "a.study-link"))
        assert link.text == "live"
        link.click()
        wait.until(lambda b: "0 completed of 12" in b.find_element(By.ID, "summary").text)
        assert browser.find_elements(By.CSS_SELECTOR, "circle.trial-point") == []
        # The plot and the table fill while the worker runs, without a reload.
        thread.start()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "circle.trial-point")) >= 1)
        thread.join(60)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#trials tbody tr")) == 12)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "circle.trial-point")) == 12)
        assert browser.find_element(By.ID, "best-line").get_attribute("d").startswith("M")
        assert "completed, strategy random, 12 completed of 12" in browser.find_element(
            By.ID, "summary").text
        # Sorting by value puts the best trial first, as the best-prompts table does.
        browser.find_element(By.CSS_SELECTOR, "#trials th[data-key=value]").click()
        best = study.best_trial()
        first_row = browser.find_element(By.CSS_SELECTOR, "#trials tbody tr td").text
        assert first_row == str(best.id)
        assert browser.find_element(By.CSS_SELECTOR, "#best tbody tr td").text == str(best.id)
        assert '"strategy": "random"' in browser.find_element(By.ID, "spec").text
    finally:
        stop.set()
        browser.quit()
