"""The agent over TLS: `hostplane-agent serve` hands the configured cert/key to gunicorn.

A CA and a server certificate for 127.0.0.1 are made in the test (the `cryptography`
package); clients verify the agent against that CA, as an operator's controller would.
"""

import datetime
import ipaddress
import os
import subprocess
import sys
import time

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import AUTH, TOKEN
from tests.hardening import synthetic_agent_env
from tests.support import free_port
from tests.support.processes import ServedProcess
from tests.umockdev_bed import AgentProcess


def _name(text):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(subject, issuer, public_key, signing_key, ca, san=None, days=1):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=max(1, -days) + 1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _san(name):
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_ca(directory, label, names=("127.0.0.1", "localhost"), days=1):
    """A CA and a server certificate for `names` signed by it, valid for `days` (negative:
    expired that long ago); returns the file paths."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(f"{label} CA", f"{label} CA", ca_key.public_key(), ca_key, ca=True,
                           days=max(days, 1))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(names[0], f"{label} CA", key.public_key(), ca_key, ca=False,
                        san=[_san(name) for name in names], days=days)
    paths = {name: str(directory / f"{label}-{name}.pem") for name in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as handle:
        handle.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.open(paths["key"], os.O_WRONLY | os.O_CREAT, 0o600), "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def tls_agent(tmp_path_factory):
    """`hostplane-agent serve` with tls_cert/tls_key and require_tls, on a loopback port."""
    tmp = tmp_path_factory.mktemp("tls")
    paths = make_ca(tmp, "hostplane-test")
    process, url, port = serve_tls_agent(tmp, paths, "tls-host")
    yield url, port, paths, tmp
    process.terminate()
    process.wait(timeout=20)


def serve_tls_agent(tmp, paths, host_id):
    """`hostplane-agent serve` over HTTPS on a loopback port, once it answers."""
    port = free_port()
    env = synthetic_agent_env(tmp, host_id, tls_cert=paths["cert"], tls_key=paths["key"],
                              require_tls="true")
    served = ServedProcess([sys.executable, "-m", "agent.cli", "serve", "--bind",
                            f"127.0.0.1:{port}"], env, tmp / f"{host_id}-serve.log")
    served.spawn()
    url = f"https://127.0.0.1:{port}"

    def answers():
        try:
            requests.get(url + "/v1/health", verify=paths["ca"], timeout=5)
        except requests.exceptions.SSLError:
            pass   # up, and not for this client: the test's business
        except requests.ConnectionError:
            return False
        return True
    served.wait_answering("the TLS agent", answers)
    return served.process, url, port


def test_agent_serves_https_verified_against_the_operators_ca(tls_agent):
    url, _, paths, _ = tls_agent
    health = requests.get(url + "/v1/health", verify=paths["ca"], timeout=10)
    assert health.status_code == 200 and health.json()["host_id"] == "tls-host"
    devices = requests.get(url + "/v1/devices", headers=AUTH, verify=paths["ca"], timeout=10)
    assert devices.status_code == 200 and len(devices.json()["pci"]) == 16
    refused = requests.get(url + "/v1/devices", verify=paths["ca"], timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"


def test_a_client_trusting_another_ca_refuses_the_agent(tls_agent):
    url, _, _, tmp = tls_agent
    other = make_ca(tmp, "someone-else")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url + "/v1/health", verify=other["ca"], timeout=10)


def test_plain_http_to_the_tls_port_gets_no_answer(tls_agent):
    _, port, _, _ = tls_agent
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/v1/devices", headers=AUTH, timeout=10)


def test_require_tls_refuses_clear_text_even_with_a_forwarded_proto_header(tmp_path):
    """gunicorn run by hand without --certfile: the app itself refuses, before the token."""
    paths = make_ca(tmp_path, "hand-run")
    agent = AgentProcess(synthetic_agent_env(tmp_path, "tls-host", tls_cert=paths["cert"],
                                             tls_key=paths["key"], require_tls="true"), TOKEN)
    try:
        for headers in (AUTH, {**AUTH, "X-Forwarded-Proto": "https"}, {}):
            answer = agent.get("/v1/devices", headers=headers)
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["code"] == "tls_required"
        assert agent.get("/v1/health").json()["error"]["code"] == "tls_required"
    finally:
        agent.stop()


def test_require_tls_without_a_certificate_does_not_serve(tmp_path):
    env = synthetic_agent_env(tmp_path, "tls-host", require_tls="true")
    done = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--bind",
                           f"127.0.0.1:{free_port()}"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "require_tls" in done.stderr


# --- the controller: same TLS settings, served and checked by the same shared code --------
@pytest.fixture(scope="module")
def tls_controller(tmp_path_factory, tls_agent):
    """`hostplane-controller serve` over HTTPS with require_tls, trusting the agent's CA."""
    from controller.db import upgrade
    from tests.test_faults_controller_support import ControllerProcess

    tmp = tmp_path_factory.mktemp("tls-controller")
    paths = make_ca(tmp, "controller-test")
    database = f"sqlite:///{tmp}/controller.db"
    upgrade(database)
    controller = ControllerProcess(tmp, database, workers=1, ca=paths["ca"],
                                   server_tls_cert=paths["cert"],
                                   server_tls_key=paths["key"], server_require_tls="true",
                                   agents_ca=tls_agent[2]["ca"])
    yield controller.url, controller.bind.rsplit(":", 1)[1], paths, tmp
    controller.stop()


def test_controller_serves_https_and_verifies_https_agents_against_its_ca(tls_controller,
                                                                          tls_agent):
    from tests.test_controller_support import ADMIN
    url, _, paths, _ = tls_controller
    assert url.startswith("https://")
    health = requests.get(url + "/v1/health", verify=paths["ca"], timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    registered = requests.post(url + "/v1/hosts", headers=ADMIN, verify=paths["ca"], timeout=30,
                               json={"url": tls_agent[0], "token": TOKEN})
    assert registered.status_code == 201, registered.text
    host = requests.get(url + "/v1/hosts/tls-host", headers=ADMIN, verify=paths["ca"],
                        timeout=10).json()
    assert host["status"] == "connected"
    other = make_ca(tls_controller[3], "not-the-controllers")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url + "/v1/health", verify=other["ca"], timeout=10)


def test_controller_with_require_tls_gets_no_answer_in_clear_text(tls_controller):
    _, port, _, _ = tls_controller
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/v1/hosts", timeout=10)


def test_controller_without_the_agents_ca_refuses_the_https_agent(tmp_path, tls_agent):
    from tests.test_controller_support import ADMIN, controller_app, controller_config
    app = controller_app(controller_config(tmp_path))   # [agents] ca unset: system store
    try:
        answer = app.test_client().post("/v1/hosts", headers=ADMIN,
                                        json={"url": tls_agent[0], "token": TOKEN})
        assert answer.status_code == 400, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == "agent_tls_failed"
        assert "certificate verify failed" in error["message"] or \
            "unable to get local issuer" in error["message"], error
        assert app.test_client().get("/v1/hosts", headers=ADMIN).get_json()["hosts"] == []
    finally:
        app.extensions["hostplane_controller"].close()


def test_controller_require_tls_refuses_clear_text_before_the_token(tmp_path):
    """The app behind a plain listener (gunicorn run by hand without --certfile)."""
    from tests.test_controller_support import ADMIN, controller_app, controller_config
    paths = make_ca(tmp_path, "controller-hand-run")
    app = controller_app(controller_config(tmp_path, server={
        "tls_cert": paths["cert"], "tls_key": paths["key"], "require_tls": True}))
    try:
        client = app.test_client()
        for headers in (ADMIN, {**ADMIN, "X-Forwarded-Proto": "https"}, {}):
            answer = client.get("/v1/hosts", headers=headers)
            assert answer.status_code == 403
            assert answer.get_json()["error"]["code"] == "tls_required"
    finally:
        app.extensions["hostplane_controller"].close()


@pytest.mark.parametrize("problem, settings, words", [
    ("key of another certificate", "mismatch", "cannot be served"),
    ("require_tls without a certificate", "require", "require_tls"),
    ("a CA bundle that is not one", "bad-ca", "[agents] ca"),
])
def test_controller_check_reports_tls_problems_and_serve_refuses_them(tmp_path, problem,
                                                                      settings, words):
    mine, other = make_ca(tmp_path, "mine"), make_ca(tmp_path, "other")
    env = {"HOSTPLANE_CONTROLLER_CONFIG": str(tmp_path / "absent.toml"),
           "HOSTPLANE_SERVER_ADMIN_TOKEN": "admin-token-0123456789",
           "HOSTPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/absent.db"}
    env.update({"mismatch": {"HOSTPLANE_SERVER_TLS_CERT": mine["cert"],
                             "HOSTPLANE_SERVER_TLS_KEY": other["key"]},
                "require": {"HOSTPLANE_SERVER_REQUIRE_TLS": "true"},
                "bad-ca": {"HOSTPLANE_AGENTS_CA": mine["key"]}}[settings])
    env = {**os.environ, **env}
    check = subprocess.run([sys.executable, "-m", "controller.cli", "check"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 1, problem
    failed = [line for line in check.stdout.splitlines() if line.startswith("FAIL")]
    assert any(words in line for line in failed), check.stdout
    serve = subprocess.run([sys.executable, "-m", "controller.cli", "serve", "--bind",
                            f"127.0.0.1:{free_port()}"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert serve.returncode == 2 and words in serve.stderr, serve.stderr


# --- registering agents only over verified TLS ------------------------------------------
def test_require_agent_tls_refuses_an_http_agent_url_naming_the_setting(tmp_path):
    from tests.test_controller_support import ADMIN, controller_app, controller_config
    app = controller_app(controller_config(tmp_path, server={"require_agent_tls": True}))
    try:
        client = app.test_client()
        answer = client.post("/v1/hosts", headers=ADMIN,
                             json={"url": "http://127.0.0.1:7070", "token": TOKEN})
        assert answer.status_code == 400, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == "agent_tls_required"
        assert "[server] require_agent_tls" in error["message"]
        assert client.get("/v1/hosts", headers=ADMIN).get_json()["hosts"] == []
    finally:
        app.extensions["hostplane_controller"].close()


def test_an_agent_whose_certificate_names_another_host_is_refused_with_the_tls_error(
        tmp_path):
    """Signed by the CA the controller trusts, but for agent.example.net, not 127.0.0.1."""
    from tests.test_controller_support import ADMIN, controller_app, controller_config
    paths = make_ca(tmp_path, "cluster", names=("agent.example.net",))
    process, url, _ = serve_tls_agent(tmp_path, paths, "misnamed-host")
    app = controller_app(controller_config(tmp_path, server={"require_agent_tls": True},
                                           agents={"ca": paths["ca"]}))
    try:
        client = app.test_client()
        answer = client.post("/v1/hosts", headers=ADMIN, json={"url": url, "token": TOKEN})
        assert answer.status_code == 400, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == "agent_tls_failed"
        assert "registration refused" in error["message"]
        assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in \
            error["message"], error
        assert client.get("/v1/hosts", headers=ADMIN).get_json()["hosts"] == []
    finally:
        app.extensions["hostplane_controller"].close()
        process.terminate()
        process.wait(timeout=20)


def test_agent_events_reach_an_https_controller_verified_against_the_cluster_ca(
        tls_controller, tls_agent, caplog):
    """The agent's notifier (the class the agent runs) with `[host] controller_ca`: the
    controller's CA gets the event through; another CA is refused and says so."""
    from agent.notify import ControllerNotifier
    from tests.test_controller_support import ADMIN
    url, _, paths, tmp = tls_controller
    requests.post(url + "/v1/hosts", headers=ADMIN, verify=paths["ca"], timeout=30,
                  json={"url": tls_agent[0], "token": TOKEN})   # 201, or 409 when done
    log = tmp / "controller.log"
    before = log.read_text().count("/v1/hosts/tls-host/events")
    ControllerNotifier(url, "tls-host", "boot-1", TOKEN, ca=paths["ca"])(7, "test")
    deadline = time.monotonic() + 20
    while log.read_text().count("/v1/hosts/tls-host/events") == before:
        assert time.monotonic() < deadline, "the event never reached the controller"
        time.sleep(0.2)
    assert '"POST /v1/hosts/tls-host/events HTTP/1.1" 202' in log.read_text()

    other = make_ca(tmp, "not-the-cluster")
    with caplog.at_level("WARNING", logger="agent.notify"):
        ControllerNotifier(url, "tls-host", "boot-1", TOKEN, ca=other["ca"])(8, "test")
        deadline = time.monotonic() + 20
        while "TLS refused" not in caplog.text:
            assert time.monotonic() < deadline, "a refused certificate went unreported"
            time.sleep(0.2)
    assert "certificate verify failed" in caplog.text


# --- `check` about certificates running out ---------------------------------------------
def _agent_check(tmp_path, cert):
    """`hostplane-agent check` on a host ready for passthrough, with `cert` served."""
    from tests.hosts import q35_node
    from tests.synthetic import write_proc, write_sysfs_tree
    host = q35_node()
    tree = write_sysfs_tree(host, tmp_path / "sys")
    os.makedirs(os.path.join(tree, "module", "vfio_pci"))
    env = {**os.environ, "HOSTPLANE_AGENT_CONFIG": str(tmp_path / "absent.toml"),
           "HOSTPLANE_HOST_ID": "c", "HOSTPLANE_HOST_SYSFS_ROOT": tree,
           "HOSTPLANE_HOST_PROC_ROOT": write_proc(str(tmp_path / "proc"), host),
           "HOSTPLANE_LIBVIRT_URI": "test:///default", "HOSTPLANE_SERVER_TLS_CERT": cert}
    return subprocess.run([sys.executable, "-m", "agent.cli", "check"], env=env,
                          capture_output=True, text=True, timeout=60)


def _controller_check(tmp_path, paths):
    """`hostplane-controller check` with a database in place: only TLS can fail it."""
    from controller.db import upgrade
    upgrade(f"sqlite:///{tmp_path}/controller.db")
    env = {**os.environ, "HOSTPLANE_CONTROLLER_CONFIG": str(tmp_path / "absent.toml"),
           "HOSTPLANE_SERVER_ADMIN_TOKEN": "admin-token-0123456789",
           "HOSTPLANE_DATABASE_URL": f"sqlite:///{tmp_path}/controller.db",
           "HOSTPLANE_SERVER_TLS_CERT": paths["cert"], "HOSTPLANE_SERVER_TLS_KEY": paths["key"],
           "HOSTPLANE_AGENTS_CA": paths["ca"]}
    return subprocess.run([sys.executable, "-m", "controller.cli", "check"], env=env,
                          capture_output=True, text=True, timeout=60)


def _not_after(path):
    with open(path, "rb") as handle:
        return x509.load_pem_x509_certificate(handle.read()).not_valid_after_utc


@pytest.mark.parametrize("days, status, column, sentence", [
    (-3, 1, "NO", "expired on {day}"),            # fails, with the date
    (20, 0, "warn", "expires in 19 days, on {day}"),   # within 30 days: warns
    (365, 0, "yes", "valid until {day}"),          # says how long it lasts
])
def test_check_judges_certificate_expiry(tmp_path, days, status, column, sentence):
    paths = make_ca(tmp_path, "cluster", days=days)
    sentence = sentence.format(day=_not_after(paths["cert"]).strftime("%Y-%m-%d"))
    agent = _agent_check(tmp_path, paths["cert"])
    assert agent.returncode == status, agent.stdout
    row = next(line for line in agent.stdout.splitlines() if line.startswith("TLS certificate"))
    assert f" {column} " in row and sentence in row, agent.stdout
    controller = _controller_check(tmp_path, paths)
    assert controller.returncode == status, controller.stdout
    shown = {"NO": "FAIL", "warn": "warn", "yes": "ok  "}[column]
    assert any(line.startswith(f"{shown}  tls expiry") and sentence in line
               for line in controller.stdout.splitlines()), controller.stdout
    if status:
        assert "Not ready to serve" in agent.stdout and "rerun the playbook" in agent.stdout
