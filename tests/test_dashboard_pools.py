"""The dashboard's device pool table in headless Chromium (real controller, real agents)."""

from tests.test_controller_support import TENANT_TOKEN
from tests.test_dashboard import api, browser, eventually, open_dashboard, world  # noqa: F401


def pool_rows(driver):
    return dict(driver.execute_script(
        "return Array.from(document.querySelectorAll('#pools tbody tr')).map("
        "r => [r.dataset.pool, Array.from(r.cells, c => c.innerText)])"))


def test_pools_table_shows_counts_per_host_and_shares(world, browser):
    url, _agents = world
    api(url, "/v1/device-pools", "POST", json={"name": "vfs", "vendor_id": "8086",
                                               "device_id": "1889", "vf_of": "8086:1593"})
    api(url, "/v1/device-pools", "POST", json={"name": "t4", "vendor_id": "10de",
                                               "device_id": "1eb8"})
    api(url, "/v1/device-pools/vfs/shares/acme", "PUT", json={"max_count": 2})
    open_dashboard(browser, url)
    table = eventually(lambda: pool_rows(browser).get("vfs") and pool_rows(browser))
    assert table["vfs"] == ["vfs", "8086:1889 VFs of 8086:1593", "4", "4", "0", "0",
                            "host-a 2/2, host-b 2/2", "acme 0/2"]
    assert table["t4"][:4] == ["t4", "10de:1eb8", "2", "2"]
    # a tenant's page lists only the pools shared with it, with its own quota
    browser.delete_all_cookies()
    browser.execute_script("localStorage.clear()")
    open_dashboard(browser, url, TENANT_TOKEN)
    eventually(lambda: list(pool_rows(browser)) == ["vfs"])
