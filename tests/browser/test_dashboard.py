"""The monitor's dashboard in headless Chromium against real processes: live job pages,
failures, actions, workers, filters, dead letters, sign-in, CSRF and rendering data as text."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect

from tests.browser.conftest import (
    VIEWPORT,
    PageProblems,
    Stack,
    gated,
    release,
    signed_in,
    start_stack,
    started,
    watch,
)
from tests.support import Proc, RedisServer, wait_until

WAIT = "tests.apps.sample_tasks.started_then_wait"
SQUARE = "tests.apps.sample_tasks.square"
FLAKY = "tests.apps.sample_tasks.flaky"
RECONCILE = "tests.apps.monitor_tasks.reconcile"
REPORT = "tests.apps.monitor_tasks.report"
HOSTILE = "<img src=x onerror=alert(1)>"


def _mark_document(page: Page) -> None:
    """A marker that only survives if the page is never reloaded."""
    page.evaluate("window.__sjeNoReload = true")


def _not_reloaded(page: Page) -> bool:
    return bool(page.evaluate("window.__sjeNoReload === true"))


def _job_ids(page: Page) -> set[str]:
    rows = page.get_by_test_id("job-row")
    return {rows.nth(i).get_attribute("data-job") or "" for i in range(rows.count())}


def _percent(page: Page) -> int:
    return int(page.get_by_test_id("progress-bar").get_attribute("aria-valuenow") or "-1")


def test_job_page_follows_a_held_job_to_success_without_a_reload(page: Page, stack: Stack) -> None:
    handle = stack.client.submit({"name": "held", "task": WAIT, "inputs": gated(stack, 4)})
    wait_until(lambda: started(stack) >= 1, 30, "a held task to start")
    page.goto(f"/#/jobs/{handle.id}")
    expect(page.get_by_test_id("job-id")).to_have_text(handle.id)
    expect(page.get_by_test_id("job-state")).to_have_text("running")
    _mark_document(page)
    assert _percent(page) < 100
    expect(page.get_by_test_id("progress-text")).to_contain_text("/ 4")

    release(stack)
    expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    expect(page.get_by_test_id("progress-bar")).to_have_attribute("aria-valuenow", "100")
    expect(page.get_by_test_id("progress-text")).to_contain_text("4 / 4 · 100 %")
    expect(page.get_by_test_id("cancel-button")).to_have_count(0)
    assert _not_reloaded(page)


def test_a_failed_task_shows_its_error_and_traceback_on_the_job_page(
    page: Page, stack: Stack
) -> None:
    handle = stack.client.submit({"name": "month end", "task": RECONCILE, "inputs": ["acct-42"]})
    assert handle.wait(timeout=60)["state"] == "failed"
    page.goto(f"/#/jobs/{handle.id}")
    expect(page.get_by_test_id("job-state")).to_have_text("failed")
    error = page.get_by_test_id("task-error").first
    expect(error.get_by_test_id("task-error-type")).to_have_text("ValueError")
    expect(error.get_by_test_id("task-error-message")).to_have_text(
        "ledger of acct-42 does not balance: off by 12.50"
    )
    traceback = error.get_by_test_id("task-error-traceback")
    expect(traceback).to_be_visible()
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("in reconcile")
    expect(traceback).to_contain_text("in _check_ledger")
    expect(traceback).to_contain_text("ValueError: ledger of acct-42 does not balance")
    expect(page.get_by_test_id("retry-button")).to_be_visible()


def test_retry_on_a_failed_job_page_runs_its_failed_tasks_again(page: Page, stack: Stack) -> None:
    marker = stack.folder / "flaky"
    item = {"marker": str(marker), "fail_times": 1}
    handle = stack.client.submit({"task": FLAKY, "inputs": [item], "retries": 0})
    assert handle.wait(timeout=60)["state"] == "failed"
    page.goto(f"/#/jobs/{handle.id}")
    expect(page.get_by_test_id("job-state")).to_have_text("failed")
    page.get_by_test_id("retry-button").click()
    expect(page.get_by_test_id("notice")).to_have_text("1 failed tasks queued again.")
    expect(page.get_by_test_id("job-state")).to_have_text("succeeded")
    expect(page.get_by_test_id("retry-button")).to_have_count(0)
    assert handle.result(timeout=60) == ["ok after 2"]


def test_cancel_on_the_job_page_asks_first_then_cancels_the_job(page: Page, stack: Stack) -> None:
    handle = stack.client.submit({"name": "to cancel", "task": WAIT, "inputs": gated(stack, 3)})
    wait_until(lambda: started(stack) >= 1, 30, "a held task to start")
    page.goto(f"/#/jobs/{handle.id}")
    expect(page.get_by_test_id("job-state")).to_have_text("running")

    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_test_id("cancel-button").click()
    expect(page.get_by_test_id("cancel-button")).to_be_enabled()
    assert stack.client.job(handle.id).status()["state"] == "running", "dismissed: nothing done"

    messages: list[str] = []

    def accept(dialog: Dialog) -> None:
        messages.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.get_by_test_id("cancel-button").click()
    expect(page.get_by_test_id("job-state")).to_have_text("cancelled")
    assert handle.id in messages[0]
    assert stack.client.job(handle.id).status()["state"] == "cancelled"
    expect(page.get_by_test_id("notice")).to_have_text("Job cancelled.")
    expect(page.get_by_test_id("cancel-button")).to_have_count(0)


def test_workers_page_lists_both_workers_and_marks_a_killed_one_lost(
    page: Page, stack: Stack
) -> None:
    page.goto("/#/workers")
    rows = page.get_by_test_id("worker-row")
    expect(rows).to_have_count(2)
    for name, proc in stack.workers.items():
        row = page.locator(f'[data-testid="worker-row"][data-name="{name}"]')
        expect(row.get_by_test_id("worker-state")).to_have_text("alive")
        expect(row).to_contain_text(str(proc.pid))
    _mark_document(page)

    victim = stack.workers["beta"]
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    beta = page.locator('[data-testid="worker-row"][data-name="beta"]')
    # 3 heartbeats of 0.5 s, but at least 5 s, then the master's next tick
    expect(beta.get_by_test_id("worker-state")).to_have_text("lost", timeout=30_000)
    expect(beta).to_have_class(re.compile(r"\blost\b"))
    alpha = page.locator('[data-testid="worker-row"][data-name="alpha"]')
    expect(alpha.get_by_test_id("worker-state")).to_have_text("alive")
    assert _not_reloaded(page)


def test_jobs_page_filters_by_state_finds_an_id_prefix_and_pages(page: Page, stack: Stack) -> None:
    done = [stack.client.submit({"name": f"ok {i}", "task": SQUARE, "args": [i]}) for i in range(3)]
    failed = stack.client.submit({"name": "bad", "task": RECONCILE, "inputs": ["x"]})
    for handle in [*done, failed]:
        handle.wait(timeout=60)
    rows = page.get_by_test_id("job-row")

    page.goto("/#/jobs")
    expect(rows).to_have_count(4)
    page.get_by_test_id("filter-state").select_option("failed")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job", failed.id)
    expect(rows.first.get_by_test_id("job-state")).to_have_text("failed")
    assert "state=failed" in page.url

    page.get_by_test_id("filter-state").select_option(label="any state")
    expect(rows).to_have_count(4)
    wanted = done[1].id
    page.get_by_test_id("filter-q").fill(wanted[:10])
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-job", wanted)
    page.get_by_test_id("filter-q").fill("")
    expect(rows).to_have_count(4)

    page.goto("/#/jobs?limit=2")
    expect(rows).to_have_count(2)
    first_page = _job_ids(page)
    expect(page.get_by_test_id("prev-page")).to_be_disabled()
    page.get_by_test_id("next-page").click()
    expect(rows.first).not_to_have_attribute("data-job", re.compile("|".join(first_page)))
    second_page = _job_ids(page)
    assert second_page and not second_page & first_page
    assert first_page | second_page == {h.id for h in [*done, failed]}
    page.get_by_test_id("prev-page").click()
    expect(rows).to_have_count(2)
    expect(rows.first).to_have_attribute("data-job", re.compile("|".join(first_page)))


def test_dead_letters_page_requeues_an_entry_and_its_job_runs_again(
    page: Page, stack: Stack
) -> None:
    marker = stack.folder / "flaky"
    handle = stack.client.submit(
        {"task": FLAKY, "inputs": [{"marker": str(marker), "fail_times": 1}], "retries": 0}
    )
    assert handle.wait(timeout=60)["state"] == "failed"
    page.goto("/#/dead-letters")
    entry = page.locator(f'[data-testid="dlq-entry"][data-entry^="{handle.id}"]')
    expect(entry).to_have_count(1)
    expect(entry).to_contain_text("RuntimeError: flaky failure #1")
    expect(page.get_by_test_id("dlq-total")).to_have_text("1 in all")

    entry.get_by_test_id("requeue-button").click()
    expect(page.get_by_test_id("notice")).to_contain_text("Requeued")
    expect(entry).to_have_count(0)
    expect(page.get_by_test_id("dlq-total")).to_have_text("0 in all")
    assert handle.result(timeout=60) == ["ok after 2"]


def test_sign_in_form_rejects_a_wrong_token_and_a_lost_session_shows_it_again(
    context: BrowserContext, stack: Stack, problems: PageProblems
) -> None:
    tab = context.new_page()
    watch(tab, problems)
    tab.goto("/")
    form = tab.get_by_test_id("signin-form")
    expect(form).to_be_visible()
    expect(tab.get_by_test_id("signin-error")).to_be_hidden()

    tab.get_by_test_id("signin-token").fill("not-the-token")
    tab.get_by_test_id("signin-submit").click()
    expect(tab.get_by_test_id("signin-error")).to_have_text("wrong token")
    assert "signin=failed" in tab.url
    expect(tab.get_by_test_id("nav-overview")).to_be_hidden()

    tab.get_by_test_id("signin-token").fill(stack.token)
    tab.get_by_test_id("signin-submit").click()
    expect(tab.get_by_test_id("nav-overview")).to_be_visible()
    expect(form).to_be_hidden()

    tab.context.clear_cookies()  # the session ends: the next refresh answers 401
    expect(form).to_be_visible()
    expect(tab.get_by_test_id("signin-error")).to_be_hidden()
    assert not problems.errors, problems.errors


def test_an_action_without_the_csrf_header_is_refused_while_the_pages_own_work(
    page: Page, stack: Stack
) -> None:
    handle = stack.client.submit({"name": "csrf", "task": WAIT, "inputs": gated(stack, 2)})
    wait_until(lambda: started(stack) >= 1, 30, "a held task to start")
    page.goto(f"/#/jobs/{handle.id}")
    expect(page.get_by_test_id("job-state")).to_have_text("running")

    url = f"/api/v1/jobs/{handle.id}/cancel"
    forged = page.evaluate(
        """async (url) => {
            const plain = await fetch(url, {method: 'POST'});
            const wrong = await fetch(url, {method: 'POST', headers: {'X-SJE-CSRF': 'guess'}});
            return [plain.status, (await plain.json()).error.code, wrong.status];
        }""",
        url,
    )
    assert forged == [403, "csrf", 403]
    assert stack.client.job(handle.id).status()["state"] == "running"

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("cancel-button").click()
    expect(page.get_by_test_id("job-state")).to_have_text("cancelled")
    assert stack.client.job(handle.id).status()["state"] == "cancelled"


def test_names_and_errors_from_users_render_as_text_and_run_no_script(
    page: Page, stack: Stack, problems: PageProblems
) -> None:
    def record(dialog: Dialog) -> None:
        problems.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    named = stack.client.submit({"name": HOSTILE, "task": SQUARE, "args": [3]})
    assert named.result(timeout=60) == 9
    failing = stack.client.submit(
        {"name": "<b>bold</b>", "task": RECONCILE, "inputs": ["<script>alert(2)</script>"]}
    )
    assert failing.wait(timeout=60)["state"] == "failed"

    page.goto("/#/jobs")
    expect(page.locator(f'[data-testid="job-row"][data-job="{named.id}"] td.name')).to_have_text(
        HOSTILE
    )
    page.goto(f"/#/jobs/{named.id}")
    expect(page.get_by_test_id("job-name")).to_have_text(HOSTILE)
    page.goto(f"/#/jobs/{failing.id}")
    expect(page.get_by_test_id("job-name")).to_have_text("<b>bold</b>")
    expect(page.get_by_test_id("task-error-message")).to_contain_text(
        "ledger of <script>alert(2)</script> does not balance"
    )
    page.goto("/#/dead-letters")
    expect(page.get_by_test_id("dlq-entry")).to_contain_text("<script>alert(2)</script>")
    assert page.locator("main img, main script, main b").count() == 0
    assert page.evaluate("document.title").startswith("Dead letters")
    assert problems.dialogs == []


def test_overview_shows_the_throughput_chart_and_counts_after_jobs_ran(
    page: Page, stack: Stack
) -> None:
    handle = stack.client.submit({"task": SQUARE, "inputs": list(range(6))})
    assert handle.result(timeout=60) == [i * i for i in range(6)]
    page.goto("/#/")
    expect(page.get_by_test_id("succeeded-total")).to_have_text("6")
    expect(page.get_by_test_id("throughput-chart").locator("canvas")).to_be_visible()
    expect(page.get_by_test_id("workers-alive")).to_have_text("2")
    expect(page.get_by_test_id("nav-overview")).to_have_attribute("aria-current", "page")


def test_queues_page_shows_the_depth_of_held_tasks(page: Page, stack: Stack) -> None:
    slots = 2 * 2
    handle = stack.client.submit({"name": "deep", "task": WAIT, "inputs": gated(stack, slots + 3)})
    wait_until(lambda: started(stack) >= slots, 30, "every slot to hold a task")
    page.goto("/#/queues")
    row = page.locator('[data-testid="queue-row"][data-queue="default"]')
    expect(row.get_by_test_id("queue-depth")).to_have_text("3")
    expect(row.get_by_test_id("queue-running")).to_have_text(str(slots))
    peek = page.locator('[data-testid="queue-peek"][data-queue="default"]')
    expect(peek.get_by_test_id("peek-row")).to_have_count(3)
    expect(peek).to_contain_text(handle.id[:12])

    release(stack)
    expect(row.get_by_test_id("queue-depth")).to_have_text("0")
    assert handle.result(timeout=60) == list(range(slots + 3))


def test_clicking_a_task_shows_what_it_printed(page: Page, stack: Stack) -> None:
    handle = stack.client.submit({"task": REPORT, "inputs": [{"name": "q3", "rows": 40}]})
    assert handle.result(timeout=60) == [40]
    page.goto(f"/#/jobs/{handle.id}")
    page.locator('[data-testid="task-row"][data-task="0"]').click()
    logs = page.get_by_test_id("task-logs")
    expect(logs).to_contain_text("report q3: reading 40 rows")
    expect(logs).to_contain_text("report q3: 20 rows look late")
    expect(page.locator('[data-testid="task-row"][data-task="0"]')).to_have_class(
        re.compile(r"\bselected\b")
    )


def test_an_unreachable_monitor_shows_a_banner_and_the_page_keeps_its_data(
    page: Page, stack: Stack
) -> None:
    page.goto("/#/workers")
    expect(page.get_by_test_id("worker-row")).to_have_count(2)
    stack.monitor_proc.stop()
    expect(page.get_by_test_id("error-banner")).to_contain_text("monitor unreachable")
    expect(page.get_by_test_id("worker-row")).to_have_count(2)
    expect(page.get_by_test_id("live-status")).to_have_text("reconnecting…")


def test_a_lost_broker_shows_a_banner_keeps_the_data_and_recovers(
    browser: Browser,
    env: dict[str, str],
    procs: list[Proc],
    tmp_path: Path,
    problems: PageProblems,
) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    context = browser.new_context(viewport=VIEWPORT)
    try:
        env["SJE_BROKER_URL"] = server.url
        stack = start_stack(env, procs, tmp_path)
        page = signed_in(context, stack, problems)
        page.goto(f"{stack.monitor}/#/workers")
        rows = page.get_by_test_id("worker-row")
        expect(rows).to_have_count(2)

        server.kill()
        banner = page.get_by_test_id("error-banner")
        expect(banner).to_contain_text("broker unreachable")
        expect(banner).to_contain_text(str(server.port))
        expect(rows).to_have_count(2)

        server.start()
        expect(banner).to_be_hidden()
        expect(rows.get_by_test_id("worker-state")).to_have_text(["alive", "alive"])
        assert not problems.errors, problems.errors
    finally:
        context.close()
        for proc in reversed(procs):
            proc.stop()
        server.close()
