"""Flower on a real cluster, started the way docker-compose.yml and infra/k8s start it.

One Flower and one small run serve every test in this module: real redis-server and S3 (weed), a
CPU worker and a GPU-queue worker, ``celery -A workers flower`` with the password in REDIS_PASSWORD
(not in BROKER_URL) and the basic-auth credentials in FLOWER_BASIC_AUTH, as in the deployments.
The tests then check authentication, the workers and tasks APIs, the Prometheus metrics and the
tasks page in headless Chromium (screenshot in test-artifacts/flower-tasks.png).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.servers import RedisServer, S3Server
from testbed.workers import CeleryWorker, FlowerProcess, cluster_env
from tests.helpers.cluster import _DATABASES, Cluster, run_id_from
from tests.helpers.images import write_images
from tests.helpers.models import make_random_rrdb
from tests.helpers.paths import REPO

pytestmark = pytest.mark.integration

DENOISE, UPSCALE, AGGREGATE = "workers.tasks.denoise", "workers.tasks.upscale", "workers.tasks.aggregate"
SWEEP = "workers.tasks.sweep"
IMAGES = 3
USER = "ops"
PASSWORD = secrets.token_urlsafe(12)
SCREENSHOT = REPO / "test-artifacts" / "flower-tasks.png"
DOCS_SCREENSHOT = REPO / "docs" / "flower-tasks.png"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


# --------------------------------------------------------------------------------------------
# HTTP without proxies (everything here is on 127.0.0.1)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Response:
    status: int
    body: bytes

    def json(self):  # parsed JSON
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def auth_header(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 15) -> Response:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return Response(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, exc.read())


def wait_for(condition, timeout: float, what: str, poll: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (OSError, ValueError) as exc:  # not up yet / half-written JSON
            last = exc
        else:
            if last:
                return last
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# --------------------------------------------------------------------------------------------
# Flower process


class Flower(FlowerProcess):
    """Flower with this module's credentials, and its API read with them."""

    def __init__(self, env: dict[str, str], work_dir: Path) -> None:
        super().__init__(env, work_dir, f"{USER}:{PASSWORD}")

    def api(self, path: str):  # parsed JSON
        response = get(f"{self.url}{path}", headers=auth_header())
        assert response.status == 200, f"GET {path}: {response.status} {response.text[:300]}\n{self.tail()}"
        return response.json()

    def metrics(self) -> str:
        return get(f"{self.url}/metrics").text


# --------------------------------------------------------------------------------------------
# One cluster, one Flower, one finished run for the whole module


@dataclass
class FlowerRun:
    flower: Flower
    cluster: Cluster
    run_id: str
    names: list[str]


def event_counts(metrics: str) -> Counter[tuple[str, str]]:
    """``flower_events_total`` summed over workers: {(task name, event type): count}."""
    counts: Counter[tuple[str, str]] = Counter()
    for line in metrics.splitlines():
        if not line.startswith("flower_events_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        counts[labels.get("task", ""), labels.get("type", "")] += float(line.rsplit(" ", 1)[1])
    return counts


def tasks_of(flower: Flower, name: str) -> list[dict]:
    return [task for task in flower.api(f"/api/tasks?taskname={name}").values()]


@pytest.fixture(scope="module")
def flower_run(redis_server: RedisServer, s3_server: S3Server,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowerRun]:
    """The ``cluster`` fixture's set-up, once per module (that fixture is function-scoped), then
    Flower and one finished run.

    The model is a random-init 1-block RRDBNet: what it outputs does not matter here, and it loads
    and runs in a fraction of the real checkpoint's time. Flower and both workers start in parallel.
    """
    work = tmp_path_factory.mktemp("flower")
    db = next(_DATABASES)
    redis_server.client(db=db).flushdb()
    s3_server.start()
    bucket = s3_server.make_bucket(f"t-{secrets.token_hex(4)}-flower")
    weights = make_random_rrdb(work / "rrdb-1block.pth", blocks=1)
    env = cluster_env(dict(os.environ), redis_server, db, s3_server, bucket, weights,
                      VISIBILITY_TIMEOUT_S="10", TRAIN_CHUNK_S="5", GPU_BATCH_SIZE="4", MAX_IMAGE_PIXELS="100000",
                      SWEEP_INTERVAL_S="1")
    logs = work / "logs"
    logs.mkdir()
    cluster = Cluster(env, redis_server, db, s3_server, bucket, logs)
    flower = Flower(env, work)
    try:
        # What Cluster.start_default() starts, without waiting for one before starting the next.
        cluster.workers += [CeleryWorker("cpu", env, logs, concurrency=2), CeleryWorker("gpu", env, logs)]
        flower.wait_ready()
        for worker in cluster.workers:
            worker.wait_ready()
        # Task events are not stored anywhere: Flower must be receiving before the run starts.
        # Worker heartbeats (every 2 s) show that it is.
        wait_for(lambda: all(f'flower_worker_online{{worker="{w.name}"}} 1.0' in flower.metrics()
                             for w in cluster.workers), 60, "Flower to receive both workers' heartbeats")
        names = write_images(work / "in", IMAGES)
        # NL-means first (the default, learned, has no CPU stage): Flower must show both stages' tasks
        result = cluster.producer("enqueue", str(work / "in"), "--preset", "standard", cwd=work)
        assert result.returncode == 0, result.stdout + result.stderr
        run_id = run_id_from(result.stdout)

        def all_succeeded() -> bool:
            states = Counter((t["name"], t["state"]) for n in (DENOISE, UPSCALE, AGGREGATE) for t in tasks_of(flower, n))
            return (states[DENOISE, "SUCCESS"] >= IMAGES and states[UPSCALE, "SUCCESS"] >= IMAGES
                    and states[AGGREGATE, "SUCCESS"] >= 1)

        try:
            wait_for(all_succeeded, 30, "Flower to show every task of the run as SUCCESS")
        except TimeoutError as exc:
            shown = {n: [(t["state"], t.get("args")) for t in tasks_of(flower, n)] for n in (DENOISE, UPSCALE, AGGREGATE)}
            raise AssertionError(f"{exc}\nFlower shows: {shown}") from None
        yield FlowerRun(flower, cluster, run_id, names)
    finally:
        with ThreadPoolExecutor() as pool:  # each waits for its process to exit: stop them together
            list(pool.map(lambda stop: stop(), [flower.stop, *(w.stop for w in cluster.workers)]))


# --------------------------------------------------------------------------------------------
# Tests


def test_pages_and_api_need_credentials(flower_run: FlowerRun) -> None:
    url = flower_run.flower.url
    for path in ("/", "/tasks", "/api/workers", "/api/tasks"):
        assert get(url + path).status == 401, path
        assert get(url + path, headers=auth_header(USER, "wrong-" + PASSWORD)).status == 401, path
    assert get(url + "/", headers=auth_header()).status == 200


def test_metrics_and_healthcheck_are_open(flower_run: FlowerRun) -> None:
    """Prometheus scrapes without credentials: the deployments keep port 5555 private (docs/deploy.md)."""
    url = flower_run.flower.url
    assert get(url + "/healthcheck").text == "OK"
    assert get(url + "/metrics").status == 200


def test_api_lists_both_workers_and_their_queues(flower_run: FlowerRun) -> None:
    """Each worker reads its own queue; a CPU worker also reads the recovery sweep's."""
    workers = flower_run.flower.api("/api/workers?refresh=1")
    expected = {w.name: [w.queue, "sweep"] if w.queue == "cpu" else [w.queue] for w in flower_run.cluster.workers}
    assert set(expected) <= set(workers), f"Flower lists {sorted(workers)}"
    for name, queues in expected.items():
        assert sorted(q["name"] for q in workers[name]["active_queues"]) == sorted(queues)


@pytest.mark.parametrize("task_name", [DENOISE, UPSCALE])
def test_api_lists_each_image_task_with_run_and_name(flower_run: FlowerRun, task_name: str) -> None:
    tasks = tasks_of(flower_run.flower, task_name)
    worker_prefix = "cpu-" if task_name == DENOISE else "gpu-"
    for image in flower_run.names:
        matching = [t for t in tasks if flower_run.run_id in (t.get("args") or "") and image in t["args"]]
        assert matching, f"no {task_name} task for {image} in {[t.get('args') for t in tasks]}"
        assert {t["state"] for t in matching} == {"SUCCESS"}, matching
        assert all(t["worker"].startswith(worker_prefix) for t in matching), matching


def test_api_lists_the_aggregate_task(flower_run: FlowerRun) -> None:
    tasks = [t for t in tasks_of(flower_run.flower, AGGREGATE) if flower_run.run_id in (t.get("args") or "")]
    assert tasks and tasks[-1]["state"] == "SUCCESS", tasks


def test_metrics_count_succeeded_tasks(flower_run: FlowerRun) -> None:
    counts = event_counts(flower_run.flower.metrics())
    assert counts[DENOISE, "task-succeeded"] >= IMAGES, counts
    assert counts[UPSCALE, "task-succeeded"] >= IMAGES, counts
    assert counts[AGGREGATE, "task-succeeded"] >= 1, counts
    assert counts[DENOISE, "task-sent"] >= IMAGES, counts  # the producer's task_send_sent_event


def test_recovery_sweeps_show_as_tasks_with_what_they_did(flower_run: FlowerRun) -> None:
    """The CPU worker's timer sends a sweep every SWEEP_INTERVAL_S: Flower lists each with its result
    (runs looked at, images re-enqueued) and /metrics counts them."""
    wait_for(lambda: any(t["state"] == "SUCCESS" for t in tasks_of(flower_run.flower, SWEEP)), 30, "a sweep")
    done = [t for t in tasks_of(flower_run.flower, SWEEP) if t["state"] == "SUCCESS"]
    assert all("reenqueued_images" in (t.get("result") or "") for t in done), done
    assert event_counts(flower_run.flower.metrics())[SWEEP, "task-succeeded"] >= 1


def test_tasks_page_in_a_browser(flower_run: FlowerRun) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-proxy-server", "--window-size=1920,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        # Basic auth on every request, the page's own AJAX calls included.
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": auth_header()})
        driver.get(f"{flower_run.flower.url}/tasks")
        table = driver.find_element(By.ID, "tasks-table")
        # The page lists the newest tasks first, a page at a time, and the sweep (every second here)
        # keeps adding its own: search for the run, as an operator would.
        search = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, "#tasks-table_filter input"))
        search.send_keys(flower_run.run_id)
        WebDriverWait(driver, 30).until(
            lambda d: sum(flower_run.run_id in row.text for row in table.find_elements(By.CSS_SELECTOR, "tbody tr"))
            >= 2 * IMAGES + 1
        )
        text = table.text
        for image in flower_run.names:
            assert image in text
        assert "SUCCESS" in text and UPSCALE in text and DENOISE in text
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT))
    finally:
        driver.quit()
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(SCREENSHOT, DOCS_SCREENSHOT)
