"""The systemd units pass `systemd-analyze verify` and keep their hardening.

No systemd runs as PID 1 here, so both checks run offline against a small root
(`--root`): the host's stock units (for sysinit.target and friends), our units in
/etc/systemd/system and the real `hostplane-*` entry points copied to /opt/hostplane/bin,
where the Ansible roles put them (verify refuses an ExecStart that is not executable).
"""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = ("hostplane-agent.service", "hostplane-controller.service")
ENTRY_POINTS = ("hostplane-agent", "hostplane-controller")


def ensure_systemd_analyze():
    """Install Debian's `systemd` package (it only brings the tools here) when absent."""
    if shutil.which("systemd-analyze") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"],
                       check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("systemd-analyze")


def unit_root(root, units_dir=os.path.join(REPO, "systemd"), with_entry_points=True):
    """A root for offline systemd-analyze holding our units and the stock ones."""
    shutil.copytree("/usr/lib/systemd/system", os.path.join(root, "usr/lib/systemd/system"),
                    symlinks=True)
    os.makedirs(os.path.join(root, "etc/systemd/system"))
    for unit in UNITS:
        shutil.copy(os.path.join(units_dir, unit), os.path.join(root, "etc/systemd/system"))
    os.makedirs(os.path.join(root, "opt/hostplane/bin"))
    if with_entry_points:
        for name in ENTRY_POINTS:
            shutil.copy(os.path.join(REPO, ".venv/bin", name),
                        os.path.join(root, "opt/hostplane/bin", name))
    return root


def verify(root, *units):
    return subprocess.run([ensure_systemd_analyze(), "verify", f"--root={root}", *units],
                          capture_output=True, text=True, timeout=60)


def unit_settings(name):
    """{key: [values]} of one unit file, across sections."""
    settings = {}
    with open(os.path.join(REPO, "systemd", name), encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith(("#", "[")):
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


def test_units_pass_systemd_analyze_verify_without_a_complaint(tmp_path):
    result = verify(unit_root(str(tmp_path)), *UNITS)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == ""


def test_verify_reports_a_missing_executable_and_a_typo(tmp_path):
    """The check above can fail: the same root without the venv, and a mistyped key."""
    broken = tmp_path / "units"
    shutil.copytree(os.path.join(REPO, "systemd"), broken)
    text = (broken / UNITS[0]).read_text().replace("Restart=on-failure", "Restart=on-falure")
    (broken / UNITS[0]).write_text(text)
    root = unit_root(str(tmp_path / "root"), str(broken), with_entry_points=False)
    result = verify(root, *UNITS)
    assert result.returncode != 0
    assert "/opt/hostplane/bin/hostplane-agent is not executable" in result.stderr
    assert "on-falure" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_units_restart_on_failure_after_their_dependencies_with_state_in_var_lib(unit):
    settings = unit_settings(unit)
    assert settings["Restart"] == ["on-failure"]
    assert settings["StateDirectory"] == ["hostplane"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["WantedBy"] == ["multi-user.target"]
    config = "/etc/hostplane/" + unit.split("-")[1].split(".")[0] + ".toml"
    assert all(config in line for line in settings["ExecStart"])
    if unit == "hostplane-agent.service":
        assert "libvirtd.service" in settings["After"][0].split()
        assert "libvirtd.service" in settings["Wants"][0].split()


def exposure(root, unit):
    result = subprocess.run([ensure_systemd_analyze(), "security", "--offline=yes",
                             f"--root={root}", "--no-pager", unit],
                            capture_output=True, text=True, timeout=60)
    line = [row for row in result.stdout.splitlines() if "Overall exposure level" in row][0]
    return float(line.split(":")[1].split()[0])


def test_hardening_scores_as_systemd_analyze_security_rates_them(tmp_path):
    """Controller: every capability dropped (OK, under 3). Agent: root with its capabilities
    for netlink/netns/libvirt, still better than an unhardened unit (9.6 UNSAFE)."""
    root = unit_root(str(tmp_path))
    assert exposure(root, "hostplane-controller.service") < 3.0
    assert exposure(root, "hostplane-agent.service") < 7.5
