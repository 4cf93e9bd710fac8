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
from tests.umockdev_bed import AgentProcess, free_port


def _name(text):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(subject, issuer, public_key, signing_key, ca, san=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def make_ca(directory, label):
    """A CA and a server certificate for 127.0.0.1 signed by it; returns the file paths."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate(f"{label} CA", f"{label} CA", ca_key.public_key(), ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate("127.0.0.1", f"{label} CA", key.public_key(), ca_key, ca=False,
                        san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                             x509.DNSName("localhost")])
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
    port = free_port()
    env = synthetic_agent_env(tmp, "tls-host", tls_cert=paths["cert"], tls_key=paths["key"],
                              require_tls="true")
    process = subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", "--bind",
                                f"127.0.0.1:{port}"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.stdout.read()
        try:
            requests.get(url + "/v1/health", verify=paths["ca"], timeout=5)
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "TLS agent did not answer"
            time.sleep(0.2)
    yield url, port, paths, tmp
    process.terminate()
    process.wait(timeout=20)


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
        assert answer.status_code == 503, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == "agent_unreachable" and "SSLError" in error["message"]
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
