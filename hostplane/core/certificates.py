"""When a certificate needs attention: the one rule both `check` commands apply.

Pure: dates in, a verdict out. Reading the files is hostplane.service's job.
"""

WARN_DAYS = 30


def expiry_verdict(not_after, now, warn_days=WARN_DAYS):
    """("ok" | "warn" | "fail", sentence) for a certificate valid until `not_after`.

    Expired fails with the date; within `warn_days` warns, so that a rerun of the
    playbook (which renews inside its window) happens before clients start refusing.
    """
    import datetime  # here: every agent command loads this module, few compare dates
    day = not_after.strftime("%Y-%m-%d %H:%M UTC")
    if not_after <= now:
        return "fail", f"expired on {day}"
    left = not_after - now
    if left <= datetime.timedelta(days=warn_days):
        return "warn", f"expires in {left.days} days, on {day}: renew it"
    return "ok", f"valid until {day} ({left.days} days)"


def worst(verdicts):
    """The most serious of several (status, sentence) verdicts; "ok" for none."""
    order = {"ok": 0, "warn": 1, "fail": 2}
    return max(verdicts, key=lambda verdict: order[verdict[0]], default=("ok", "none"))
