"""The dashboard in headless Chromium against a real controller with two real agents.

The agents serve synthetic sysfs trees (this machine has no GPUs or USB) through the
controller slice's loopback helpers; the browser is Debian's chromium + chromium-driver
driven by selenium. A screenshot is kept in artifacts/dashboard.png.
"""

import os
import shutil
import time

import pytest
import requests

from tests.test_controller_support import ADMIN, ADMIN_TOKEN, TENANT_TOKEN, Served, \
    two_host_world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(REPO, "artifacts")
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def world(tmp_path):
    with two_host_world(tmp_path) as (app, client, agents):
        served = Served(app)
        try:
            yield served.url, agents
        finally:
            served.stop()


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1500,1300",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                              options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def api(url, path, method="GET", **kwargs):
    answer = requests.request(method, url + path, headers=ADMIN, timeout=10, **kwargs)
    answer.raise_for_status()
    return answer.json()


def eventually(check, timeout=20):
    """The page refreshes itself: wait until `check()` is truthy and return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"{check.__doc__ or check} never became true"
            return value
        time.sleep(0.2)


def rows(driver, table):
    """{row key: [cell texts]}, read in one script call (the page redraws every few s)."""
    return dict(driver.execute_script(
        "return Array.from(document.querySelectorAll(`#${arguments[0]} tbody tr`)).map("
        "r => [r.dataset.device || r.dataset.host, Array.from(r.cells, c => c.innerText)])",
        table))


def press(driver, table, key, action):
    """Click a row's button; the page redraws its tables, so find the row afresh."""
    from selenium.common.exceptions import StaleElementReferenceException
    for _ in range(20):
        try:
            driver.find_element("css selector", f'#{table} tr[data-device="{key}"] '
                                f"button[data-action={action}]").click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"could not press {action} on {key}")


def open_dashboard(driver, url, token=ADMIN_TOKEN):
    """Load `/` and enter a token in the page's token form, as an operator does."""
    driver.get(url + "/")
    driver.find_element("id", "token").send_keys(token)
    driver.find_element("css selector", "#token-form button[type=submit]").click()


def test_page_loads_without_a_token_and_holds_no_data(world):
    url, _agents = world
    page = requests.get(url + "/", timeout=10)
    assert page.status_code == 200 and "<table id=\"gpus\">" in page.text
    assert "host-a" not in page.text   # the data comes from the API, with a token
    assert requests.get(url + "/ui/dashboard.js", timeout=10).status_code == 200
    assert requests.get(url + "/v1/devices", timeout=10).status_code == 401


def test_tables_show_each_hosts_devices_and_a_disable_click_reaches_the_api(world, browser):
    url, _agents = world
    open_dashboard(browser, url)
    devices = api(url, "/v1/devices")["devices"]
    gpus = {f"{d['host_id']}/{d['id']}" for d in devices if d["type"] in ("gpu", "gpu-audio")}
    usb = {f"{d['host_id']}/{d['id']}" for d in devices if d["kind"] == "usb"}
    assert len(gpus) == 8 and len(usb) >= 2   # 2 hosts x 2 GPUs with their audio functions

    eventually(lambda: set(rows(browser, "gpus")) == gpus)
    assert set(rows(browser, "usb")) == usb
    hosts = eventually(lambda: rows(browser, "hosts"))
    assert sorted(hosts) == ["host-a", "host-b"]
    assert [cells[2] for cells in hosts.values()] == ["connected", "connected"]
    assert rows(browser, "usb")["host-a/0781:5567:4C530001"][3:6] == \
        ["host-a", "enabled", "2.10"]

    # Disable a GPU through the page; the API sees it, the page shows it.
    target = "host-b/0000:3b:00.0"
    press(browser, "gpus", target, "disable")
    eventually(lambda: api(url, "/v1/devices/host-b/0000:3b:00.0")["state"] == "disabled")
    eventually(lambda: rows(browser, "gpus")[target][4] == "disabled")
    assert "disabled" in browser.find_element("id", "message").text

    # Rename and share through the page.
    press(browser, "gpus", "host-a/0000:af:00.0", "rename")
    field = browser.find_element("css selector",
                                 '#gpus tr[data-device="host-a/0000:af:00.0"] td form input')
    field.clear()
    field.send_keys("render-node-7\n")
    eventually(lambda: api(url, "/v1/devices/host-a/0000:af:00.0")["name"] == "render-node-7")
    press(browser, "gpus", "host-a/0000:af:00.0", "share")
    eventually(lambda: api(url, "/v1/devices/host-a/0000:af:00.0")["shared"] is True)

    # Per host: only host-b's devices.
    from selenium.webdriver.support.select import Select
    Select(browser.find_element("id", "host")).select_by_value("host-b")
    eventually(lambda: set(rows(browser, "gpus")) == {g for g in gpus if g.startswith("host-b/")})

    os.makedirs(ARTIFACTS, exist_ok=True)
    Select(browser.find_element("id", "host")).select_by_value("")
    eventually(lambda: set(rows(browser, "gpus")) == gpus)
    browser.save_screenshot(os.path.join(ARTIFACTS, "dashboard.png"))


def test_explain_form_says_why_a_vm_cannot_be_placed(world, browser):
    url, _agents = world
    open_dashboard(browser, url)
    eventually(lambda: rows(browser, "hosts"))
    browser.find_element("id", "x-gpus").send_keys("10de:1eb8x3")
    browser.find_element("css selector", "#explain-form button").click()
    verdict = eventually(lambda: browser.find_elements("id", "explain-verdict"))[0]
    assert verdict.text == "Not placeable on any host."
    reasons = [li.text for li in browser.find_elements("css selector", "#explain li")]
    expected = api(url, "/v1/schedule/explain", "POST", json={
        "name": "probe", "vcpus": 2, "memory_mib": 2048,
        "gpus": [{"vendor_id": "10de", "device_id": "1eb8", "count": 3}]})["rejected"]
    assert sorted(expected) == ["host-a", "host-b"]
    assert reasons == [f"{host}: {'; '.join(why)}" for host, why in sorted(expected.items())]
    browser.save_screenshot(os.path.join(ARTIFACTS, "dashboard-explain.png"))


def test_a_tenant_token_sees_the_apis_refusal_on_admin_actions(world, browser):
    url, _agents = world
    api(url, "/v1/devices/host-a/0000:3b:00.0", "PATCH", json={"shared": True})
    open_dashboard(browser, url, TENANT_TOKEN)
    eventually(lambda: set(rows(browser, "gpus")) == {"host-a/0000:3b:00.0"})
    press(browser, "gpus", "host-a/0000:3b:00.0", "disable")
    message = eventually(lambda: browser.find_element("id", "message").text)
    assert "admin" in message
    assert api(url, "/v1/devices/host-a/0000:3b:00.0")["state"] == "enabled"


@pytest.fixture
def demo_world(tmp_path):
    """The controller with the agent `run-local --demo` serves (tests.demo_host), and no
    other: what a newcomer without a GPU sees."""
    from tests.demo_host import HOST_ID, demo_host
    from tests.test_controller_support import LoopbackAgent, controller_app, \
        controller_config, register
    agent = LoopbackAgent(tmp_path, HOST_ID, demo_host())
    app = controller_app(controller_config(tmp_path))
    register(app.test_client(), agent, cluster="demo")
    served = Served(app)
    try:
        yield served.url
    finally:
        served.stop()
        agent.stop()
        app.extensions["hostplane_controller"].close()


@pytest.mark.parametrize("width", [1280, 1920])
def test_demo_tables_fit_the_screen_and_say_what_cannot_be_assigned(demo_world, browser,
                                                                    width):
    url = demo_world
    browser.set_window_size(width, 1400)
    open_dashboard(browser, url)
    gpus = eventually(lambda: len(rows(browser, "gpus")) == 5 and rows(browser, "gpus"))
    usb = eventually(lambda: rows(browser, "usb"))
    # the token was taken: its prompt is gone
    eventually(lambda: "Enter an API token" not in browser.find_element("id", "message").text)

    refused = gpus["demo-gpu-server/0000:d8:00.0"]
    assert refused[5] == "not assignable" and "attach" not in refused[9]
    title = browser.find_element(
        "css selector", '#gpus tr[data-device="demo-gpu-server/0000:d8:00.0"]'
    ).get_attribute("title")
    assert title.startswith("no IOMMU group")
    assert gpus["demo-gpu-server/0000:3b:00.0"][5] == "ready"
    assert "attach" in gpus["demo-gpu-server/0000:3b:00.0"][9]
    stick = usb["demo-gpu-server/0781:5567:4C530001"]
    assert stick[4:7] == ["enabled", "2.10", "ready"]   # state, USB version, status

    # Every Actions cell inside the viewport, and no horizontal scrollbar.
    fit = browser.execute_script(
        "const view = document.documentElement.clientWidth;"
        "const cells = Array.from(document.querySelectorAll('td.actions'));"
        "return {view, scroll: document.documentElement.scrollWidth, cells: cells.length,"
        " right: Math.max(...cells.map(c => c.getBoundingClientRect().right))};")
    assert fit["cells"] >= 7
    assert fit["right"] <= fit["view"], fit
    assert fit["scroll"] <= fit["view"], fit

    os.makedirs(ARTIFACTS, exist_ok=True)
    browser.save_screenshot(os.path.join(ARTIFACTS, f"dashboard-demo-{width}.png"))


TOPOLOGY = """
const figure = document.querySelector(`#topology figure[data-host="${arguments[0]}"]`);
if (!figure || !figure.querySelector("g.device")) return null;
const box = (g) => { const r = g.querySelector("rect").getBoundingClientRect();
                     return [r.left, r.top, r.right, r.bottom]; };
const texts = (g) => Array.from(g.querySelectorAll(":scope > text"), (t) => t.textContent);
const nodeOf = (g) => g.closest("g.numa-node").dataset.node;
return {
  view: document.documentElement.clientWidth,
  svg: figure.querySelector("svg").getBoundingClientRect().right,
  nodes: Array.from(figure.querySelectorAll("g.numa-node"),
                    (g) => ({node: g.dataset.node, text: texts(g), box: box(g)})),
  switches: Array.from(figure.querySelectorAll("g.switch"), (g) => ({
    id: g.dataset.switch, node: nodeOf(g), box: box(g),
    devices: Array.from(g.querySelectorAll("g.device"), (d) => d.dataset.device)})),
  devices: Object.fromEntries(Array.from(figure.querySelectorAll("g.device"), (g) => [
    g.dataset.device, {node: nodeOf(g), lines: texts(g), box: box(g),
                       state: g.getAttribute("class")}]))};
"""


def inside(inner, outer):
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2]
            and inner[3] <= outer[3])


@pytest.mark.parametrize("width", [1280, 1920])
def test_demo_topology_picture_shows_numa_nodes_switches_and_device_holders(
        demo_world, browser, width):
    """The SVG picture read back as drawn: NUMA node boxes with their CPUs, the PCIe switch
    with the two NVMe drives inside its box, every endpoint (not the bridges) with its
    IOMMU group and holder, all within the window."""
    from tests.demo_host import HOST_ID
    url = demo_world
    api(url, "/v1/vms", "POST", json={"name": "demo-train", "vcpus": 2, "memory_mib": 1024,
                                      "gpus": [{"id": "0000:af:00.0"}]})
    browser.set_window_size(width, 1400)
    open_dashboard(browser, url)
    picture = eventually(lambda: browser.execute_script(TOPOLOGY, HOST_ID))

    nodes = {n["node"]: n for n in picture["nodes"]}
    assert list(nodes) == ["0", "1", "none"]
    assert nodes["1"]["text"] == ["NUMA node 1", "CPUs 16-31 · 128 GiB"]
    assert [(s["id"], s["node"], s["devices"]) for s in picture["switches"]] == [
        ("0000:c9:00.0", "1", ["0000:cb:00.0", "0000:cc:00.0"])]
    switch = picture["switches"][0]["box"]
    devices = picture["devices"]
    assert all(inside(devices[d]["box"], switch) for d in ("0000:cb:00.0", "0000:cc:00.0"))
    assert not any(address in devices for address in ("0000:c9:00.0", "0000:ca:00.0",
                                                      "0000:3a:00.0"))   # bridges
    for address, device in devices.items():
        assert inside(device["box"], nodes[device["node"]]["box"]), address
    held = devices["0000:af:00.0"]
    assert held["node"] == "1" and held["lines"][0] == "0000:af:00.0"
    assert "IOMMU group 13" in held["lines"] and "VM demo-train" in held["lines"]
    assert held["state"] == "device held"
    assert devices["0000:3b:00.0"]["node"] == "0" and "ready" in devices["0000:3b:00.0"]["lines"]
    refused = devices["0000:d8:00.0"]
    assert "no IOMMU group" in refused["lines"] and "not assignable" in refused["lines"]
    assert devices["0000:00:14.0"]["node"] == "none"   # firmware gave the controller no node
    assert picture["svg"] <= picture["view"], picture["svg"]

    # A device in a pool (the pools' field) says so beside its group.
    lines = browser.execute_script(
        "return deviceLines({id: '0000:01:00.0', type: 'gpu', name: 'a', iommu_group: 7, "
        "pool: 'a100', status: 'ready', assignable: true, vm: null});")
    assert lines == ["0000:01:00.0", "gpu · a", "IOMMU group 7 · pool a100", "ready"]

    os.makedirs(ARTIFACTS, exist_ok=True)
    figure = browser.find_element("css selector", f'#topology figure[data-host="{HOST_ID}"]')
    figure.screenshot(os.path.join(ARTIFACTS, f"dashboard-topology-{width}.png"))
