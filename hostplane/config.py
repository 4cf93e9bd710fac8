"""TOML configuration with `HOSTPLANE_<SECTION>_<KEY>` environment overrides.

Both services start from environment alone: a missing file means defaults plus
environment. Values from the environment are coerced to the type of the default so
`HOSTPLANE_POLL_INTERVAL_S=2` is an int and `HOSTPLANE_SERVER_INSECURE=yes` a bool.
Sections whose default is an empty dict (such as `[tenants]`) are free-form maps.
"""

import copy
import json
import os

ENV_PREFIX = "HOSTPLANE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """A configuration problem, worded as the one line an operator needs."""


def load_config(defaults, path=None, environ=None):
    """Defaults, then the TOML file at `path` (if it exists), then the environment."""
    environ = os.environ if environ is None else environ
    config = copy.deepcopy(defaults)
    if path and os.path.exists(path):
        import tomllib   # only with a file: commands run from the environment skip it
        try:
            with open(path, "rb") as handle:
                _merge_file(config, tomllib.load(handle), path)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    _merge_environment(config, environ)
    return config


def _merge_file(config, data, path):
    for section, values in data.items():
        if section not in config:
            raise ConfigError(f"{path}: unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        for key, value in values.items():
            config[section][key] = _check_type(config[section], section, key, value, path)


def _check_type(section_values, section, key, value, where):
    if key not in section_values:
        if section_values:  # fixed section: unknown keys are typos
            raise ConfigError(f"{where}: unknown key {section}.{key}")
        return value
    default = section_values[key]
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{where}: {section}.{key} must be true or false")
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {section}.{key} must be a number")
    return value


def _merge_environment(config, environ):
    # Longest section names first so a section never swallows another's prefix.
    sections = sorted(config, key=len, reverse=True)
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX):].lower()
        for section in sections:
            if rest.startswith(section + "_") and len(rest) > len(section) + 1:
                key = rest[len(section) + 1:]
                values = config[section]
                if key in values:
                    values[key] = _coerce(values[key], raw, name)
                elif not values or section == "tenants":
                    values[key] = raw
                break


def _coerce(default, raw, name):
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r}: expected true or false")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a whole number") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if isinstance(default, list):
        raw = raw.strip()
        if raw.startswith("["):
            try:
                return list(json.loads(raw))
            except ValueError:
                raise ConfigError(f"{name}: not a JSON list") from None
        return [item.strip() for item in raw.split(",") if item.strip()]
    return raw
