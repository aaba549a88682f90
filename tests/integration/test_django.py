"""Django: relay.contrib.django's settings and checks, enqueue_on_commit, and the admin.

In-process tests configure Django once (the example shop's settings, two SQLite databases) and
give each test its relay through ``override_settings(RELAY=...)``, as a project's own tests
would; real Redis and the sandbox; a worker flush delivers. The admin test runs the example
shop under Django's real development server and drives it with Debian's chromium through
selenium: log in, find the dead event, retry it, see it delivered.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import django
import httpx
import pytest
import redis
from django.conf import settings as django_settings
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connections, transaction
from django.test import Client, override_settings
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

import relay
from examples.django_shop import settings as shop_settings
from relay.contrib.django import enqueue_on_commit
from relay.contrib.django.apps import relay_app
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import default_enqueuer
from relay.errors import ConfigError
from relay.keys import Keys
from relay.outbox.engine import make_engine
from relay.outbox.migrate import upgrade
from relay.settings import Settings
from tests.support.pipeline import delivered_ids, flush
from tests.support.services import ROOT, SECRETS, relay_env

MANAGE = ROOT / "examples" / "django_shop" / "manage.py"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver (Debian's; scripts/test installs them)"
PASSWORD = "a-long-test-password-42"


class Boom(Exception):
    """The view's own failure, after it enqueued: the transaction rolls back."""


@pytest.fixture(scope="session")
def django_project(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Django set up once for the session: the example shop's settings, two databases."""
    if django_settings.configured:
        return
    directory = tmp_path_factory.mktemp("django")
    values = {name: getattr(shop_settings, name) for name in dir(shop_settings) if name.isupper()}
    values["DATABASES"] = {
        alias: {"ENGINE": "django.db.backends.sqlite3", "NAME": directory / f"{alias}.db"}
        for alias in ("default", "other")
    }
    values["ALLOWED_HOSTS"] = [*values["ALLOWED_HOSTS"], "testserver"]  # Django's test client
    django_settings.configure(**values)
    django.setup()


def relay_dict(settings: Settings, **extra: Any) -> dict[str, Any]:
    """``settings.RELAY`` for this test's relay: the variables' names without ``RELAY_``."""
    values: dict[str, Any] = {
        name.removeprefix("RELAY_"): value
        for name, value in relay_env(settings).items()
        if name.startswith("RELAY_")
    }
    values.update(extra)
    return values


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def project(django_project: None, settings: Settings) -> Iterator[Settings]:
    """The Django project with this test's relay in ``settings.RELAY``."""
    with override_settings(RELAY=relay_dict(settings)):
        yield settings


def queued(settings: Settings, client: redis.Redis) -> int:
    return int(client.llen(Keys(settings.namespace).queue))


def purchase(currency: str = "EUR") -> dict[str, Any]:
    return {"event_type": "purchase", "value": 49.9, "currency": currency}


def relay_messages() -> list[tuple[str, str]]:
    return [(m.id or "", m.msg) for m in checks.run_checks(tags=["relay"])]


# -- settings and the system check --------------------------------------------------------------


def test_settings_relay_overrides_the_environment(
    django_project: None, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_NAMESPACE", "from-env")
    monkeypatch.setenv("RELAY_SERVOKI_SITE", "env.example")
    monkeypatch.setenv("RELAY_SERVOKI_API_KEY", SECRETS[0])
    relay_setting = {"NAMESPACE": "from-settings", "enqueue_timeout": 0.05}
    with override_settings(RELAY={**relay_setting, "DATABASE_ALIAS": "other"}):
        app = relay_app()
        read = app.settings.settings
        assert (read.namespace, read.servoki_site) == ("from-settings", "env.example")
        assert read.enqueue_timeout == 0.05  # lower case keys are read too
        assert app.settings.database_alias == "other"
        assert default_enqueuer() is app.enqueuer  # relay.enqueue() uses the project's settings
    with override_settings(RELAY={}):
        assert relay_app().settings.settings.namespace == "from-env"
        assert relay_app().settings.database_alias == "default"


def test_the_system_check_reports_invalid_settings(
    django_project: None, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with override_settings(RELAY={"BATCH_SIZE": 0}):
        with pytest.raises(SystemCheckError, match=r"relay\.E001.*RELAY_BATCH_SIZE"):
            call_command("check")  # what `manage.py check`, runserver and migrate run
        # The app still started; the first enqueue raises the same error.
        with pytest.raises(ConfigError, match="RELAY_BATCH_SIZE"):
            enqueue_on_commit("servoki", purchase())
    with override_settings(RELAY={"REDIS_URLL": "redis://elsewhere"}):
        [(code, message)] = relay_messages()
        assert code == "relay.E001"
        assert message.startswith("RELAY_REDIS_URLL is not a relay setting")
    with override_settings(RELAY=["REDIS_URL"]):
        assert relay_messages()[0][1].startswith("settings.RELAY must be a dict")
    monkeypatch.setenv("RELAY_SERVOKI_API_KEY", "not-a-key")
    with override_settings(RELAY={}):
        [(code, message)] = relay_messages()
        assert code == "relay.E001" and "RELAY_SERVOKI_API_KEY" in message
        assert "not-a-key" not in message
    monkeypatch.delenv("RELAY_SERVOKI_API_KEY")

    with override_settings(RELAY={"DATABASE_ALIAS": "nope"}):
        [(code, message)] = relay_messages()
        assert code == "relay.E002" and "'nope', which is not in DATABASES" in message
    default_db = django_settings.DATABASES["default"]["NAME"]
    with override_settings(RELAY={"DATABASE_URL": f"sqlite:///{default_db}"}):
        assert relay_messages() == []
    with override_settings(RELAY={"DATABASE_URL": f"sqlite:///{default_db}.elsewhere"}):
        [(code, message)] = relay_messages()
        assert code == "relay.W001" and "is not the relay's outbox database" in message


# -- enqueue_on_commit --------------------------------------------------------------------------


def test_enqueue_on_commit_pushes_after_the_commit_and_a_worker_delivers(
    project: Settings, sandbox: SandboxProcess, redis_client: redis.Redis
) -> None:
    with transaction.atomic():
        event_id = enqueue_on_commit("servoki", purchase(), event_id="order_1")
        assert event_id == "order_1"
        assert queued(project, redis_client) == 0  # nothing before the commit
    assert queued(project, redis_client) == 1
    stamped = enqueue_on_commit("servoki", purchase())  # outside a transaction: at once
    assert queued(project, redis_client) == 2
    report = flush(project)
    assert report.dispatched.delivered == 2 and report.exit_code == 0
    assert delivered_ids(sandbox) == sorted(["order_1", stamped])


def test_a_rollback_sends_nothing(
    project: Settings, sandbox: SandboxProcess, redis_client: redis.Redis
) -> None:
    with pytest.raises(Boom), transaction.atomic():
        enqueue_on_commit("servoki", purchase(), event_id="rolled_back")
        raise Boom
    with transaction.atomic():
        enqueue_on_commit("servoki", purchase(), event_id="kept")
        try:
            with transaction.atomic():  # a savepoint rolled back: its events go with it
                enqueue_on_commit("servoki", purchase(), event_id="savepoint_rolled_back")
                raise Boom
        except Boom:
            pass
    assert queued(project, redis_client) == 1
    assert flush(project).dispatched.delivered == 1
    assert delivered_ids(sandbox) == ["kept"]


def test_using_names_the_database_whose_commit_sends(
    project: Settings, redis_client: redis.Redis
) -> None:
    with transaction.atomic(using="other"):
        enqueue_on_commit("servoki", purchase(), event_id="on_other", using="other")
        assert queued(project, redis_client) == 0
    assert queued(project, redis_client) == 1
    with transaction.atomic():  # "default" is in a transaction, "other" is not: at once
        enqueue_on_commit("servoki", purchase(), event_id="other_at_once", using="other")
        assert queued(project, redis_client) == 2


def test_an_invalid_event_fails_at_the_call_naming_the_field(
    project: Settings, redis_client: redis.Redis
) -> None:
    with transaction.atomic():
        with pytest.raises(relay.InvalidEvent) as raised:
            enqueue_on_commit("servoki", purchase(currency="euro"))
        enqueue_on_commit("servoki", purchase(), event_id="valid")
    assert str(raised.value).startswith(
        "servoki.currency must be a 3-letter ISO 4217 code such as \"EUR\", got 'euro'"
    )
    assert queued(project, redis_client) == 1  # the valid one only


# -- the admin on both databases (Django's test client) ------------------------------------------


def django_database(url: str) -> dict[str, Any]:
    """The DATABASES entry of the relay's database URL (as a project would write it)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parts.path.removeprefix("/")}
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.removeprefix("/"),
        "USER": parts.username,
        "HOST": parse_qs(parts.query)["host"][0],
    }


@pytest.fixture
def outbox_alias(django_project: None, db_url: str) -> Iterator[str]:
    """A DATABASES entry ``outbox`` for this test's outbox database (SQLite or PostgreSQL)."""
    entry = connections.configure_settings(
        {"default": connections.settings["default"], "outbox": django_database(db_url)}
    )["outbox"]
    # DATABASES as Django's connections and the relay's check read it (override_settings
    # cannot change DATABASES once connections exist).
    for databases in (django_settings.DATABASES, connections.settings):
        databases["outbox"] = entry
    yield "outbox"
    connections["outbox"].close()
    del connections["outbox"]
    for databases in (django_settings.DATABASES, connections.settings):
        databases.pop("outbox", None)


@pytest.fixture(scope="session")
def django_users(django_project: None) -> None:
    """Django's own tables (users, sessions) in the default database, once."""
    call_command("migrate", verbosity=0, database="default")


def test_the_admin_reads_and_changes_the_outbox_through_an_alias(
    settings: Settings,
    sandbox: SandboxProcess,
    outbox_alias: str,
    django_users: None,
    db_url: str,
) -> None:
    # Models import once Django is set up (the session fixture), not with this module.
    from django.contrib.auth.models import Permission, User

    from relay.contrib.django.models import OutboxEvent

    sandbox.set_faults(error_rate=1, error_status=404, apis=["servoki"])
    with override_settings(RELAY=relay_dict(settings, DATABASE_ALIAS=outbox_alias)):
        assert relay_messages() == []  # the alias is the relay's database
        enqueue_on_commit("servoki", {**purchase(), "site": "unknown.example"}, event_id="gone")
        assert flush(settings).exit_code == 1
        sandbox.clear_faults()
        enqueue_on_commit("servoki", purchase(), event_id="sent")
        assert flush(settings).exit_code == 0

        user = User.objects.create_superuser(f"ops_{uuid.uuid4().hex[:8]}", "o@example.com")
        client = Client()
        client.force_login(user)
        listing = "/admin/relay/outboxevent/"
        answer = client.get(listing)
        assert answer.status_code == 200
        assert b"gone" in answer.content and b"sent" in answer.content
        dead = client.get(listing, {"reason": "HTTP 404"}).content.decode()
        assert ">gone<" in dead and ">sent<" not in dead
        assert ">sent<" not in client.get(listing, {"status__exact": "dead"}).content.decode()
        assert ">sent<" in client.get(listing, {"q": "sent"}).content.decode()

        gone = OutboxEvent.objects.get(event_id="gone")
        detail = client.get(f"{listing}{gone.pk}/change/").content.decode()
        assert "&quot;site&quot;: &quot;unknown.example&quot;" in detail  # the payload, decoded
        assert gone.history.count() == 1 and gone.history.get().status == 404
        assert gone.updated_at.tzinfo is not None  # naive UTC read as UTC on both databases

        answer = client.post(
            listing, {"action": "discard", "_selected_action": [gone.pk]}, follow=True
        )
        assert "Discarded 1 event(s)" in answer.content.decode()
        assert OutboxEvent.objects.get(event_id="gone").status == "discarded"
        sent = OutboxEvent.objects.get(event_id="sent")
        answer = client.post(
            listing, {"action": "retry", "_selected_action": [sent.pk]}, follow=True
        )
        assert "Skipped sent (servoki): it is delivered" in answer.content.decode()

        for forbidden in (f"{listing}add/", f"{listing}{sent.pk}/delete/"):
            assert client.get(forbidden).status_code == 403
        assert client.post(f"{listing}{sent.pk}/change/", {"status": "dead"}).status_code == 403
        assert OutboxEvent.objects.get(event_id="sent").status == "delivered"

        viewer = User.objects.create_user(f"view_{uuid.uuid4().hex[:8]}", is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_outboxevent"))
        client.force_login(viewer)
        assert client.get(listing).status_code == 200
        answer = client.post(listing, {"action": "retry", "_selected_action": [gone.pk]})
        assert OutboxEvent.objects.get(event_id="gone").status == "discarded"  # not allowed


# -- the admin, in a real browser ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def manage(env: dict[str, str], cwd: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(MANAGE), *args], env=env, cwd=cwd, capture_output=True, text=True
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture
def shop(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The example shop under ``manage.py runserver`` on loopback, its outbox in its own
    database (the relay's SQLite file); a superuser ``ops``. Its base URL."""
    database = Path(settings.resolved_database_url.removeprefix("sqlite:///"))
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)  # `relay db upgrade`: the relay's tables
    engine.dispose()
    env = relay_env(
        settings,
        SHOP_DATABASE=str(database),
        DJANGO_SUPERUSER_PASSWORD=PASSWORD,
        PYTHONUNBUFFERED="1",
    )
    env.pop("DJANGO_SETTINGS_MODULE", None)
    manage(env, tmp_path, "migrate", "--noinput", "-v", "0")  # Django's tables, same file
    manage(env, tmp_path, "check", "--fail-level", "WARNING")  # alias and outbox agree
    manage(
        env,
        tmp_path,
        "createsuperuser",
        "--noinput",
        "--username",
        "ops",
        "--email",
        "ops@example.com",
    )
    port = free_port()
    log = (tmp_path / "runserver.log").open("w")
    server = subprocess.Popen(
        [sys.executable, str(MANAGE), "runserver", "--noreload", f"127.0.0.1:{port}"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "runserver.log").read_text()
            try:
                if httpx.get(f"{url}/admin/login/", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "runserver.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(10)
        log.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless chromium through chromedriver; a missing one fails, saying what to install."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"the admin test needs {' and '.join(missing)}: {INSTALL}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_admin_finds_a_dead_event_retries_it_and_shows_it_delivered(
    settings: Settings, sandbox: SandboxProcess, shop: str, browser: Any
) -> None:
    def pay(order: str) -> None:
        body = {"id": order, "value": 20.0, "currency": "EUR"}
        answer = httpx.post(f"{shop}/pay", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["event_id"] == f"order_{order}"

    sandbox.set_faults(error_rate=1, error_status=400, apis=["servoki"])  # Servoki refuses
    pay("dead1")
    assert flush(settings).exit_code == 1  # dead: a 400
    sandbox.clear_faults()
    pay("fine1")
    assert flush(settings).exit_code == 0
    seen: list[str] = []

    def page() -> str:
        seen.append(browser.page_source)
        return str(browser.find_element(By.TAG_NAME, "body").text)

    def arrive(condition: Callable[[], bool]) -> None:
        """Wait for the page the last click or key led to (selenium may return before)."""
        WebDriverWait(browser, 10).until(lambda _: condition(), message=browser.current_url)

    listing = f"{shop}/admin/relay/outboxevent/"
    browser.get(f"{shop}/admin/login/?next=/admin/relay/outboxevent/")
    browser.find_element(By.ID, "id_username").send_keys("ops")
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    arrive(lambda: browser.current_url == listing)
    assert "order_dead1" in page() and "order_fine1" in page()

    # Find it: the dead reason filter (the labels of `relay status`).
    browser.find_element(By.LINK_TEXT, "HTTP 400").click()
    arrive(lambda: "reason=HTTP" in browser.current_url)
    text = page()
    assert "order_dead1" in text and "order_fine1" not in text

    # Its detail page: the payload and every attempt.
    browser.find_element(By.LINK_TEXT, "order_dead1").click()
    arrive(lambda: "/change/" in browser.current_url)
    text = page()
    assert '"event_type": "purchase"' in text and '"currency": "EUR"' in text
    attempts = browser.find_elements(By.CSS_SELECTOR, "#history-group tbody tr.has_original")
    assert len(attempts) == 1 and "400" in attempts[0].text and "dead" in attempts[0].text
    assert "Save" not in text  # read-only
    browser.back()
    arrive(lambda: "reason=HTTP" in browser.current_url)

    # Retry it with the admin action: relay.ops.Admin, as `relay outbox retry`.
    browser.find_element(By.CSS_SELECTOR, "input.action-select").click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("retry")
    browser.find_element(By.NAME, "index").click()
    arrive(lambda: "Retried 1 event(s)" in browser.page_source)
    page()

    sandbox_before = len(delivered_ids(sandbox))
    report = flush(settings)
    assert report.dispatched.delivered == 1 and report.exit_code == 0
    assert len(delivered_ids(sandbox)) == sandbox_before + 1

    # Search it by event id: delivered now.
    browser.get(listing)
    browser.find_element(By.ID, "searchbar").send_keys("order_dead1\n")
    arrive(lambda: "q=order_dead1" in browser.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
    assert len(rows) == 1 and "delivered" in rows[0].text
    page()

    # Nothing is added, changed or deleted by hand.
    browser.get(f"{listing}add/")
    assert "403" in page()
    assert not any(secret in html for html in seen for secret in SECRETS)
