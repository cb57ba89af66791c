"""The methods by name. A method registers itself with @register("name"); its settings dataclass
(`Method.Settings`) is what a config's `method:` mapping may hold when it names that method."""
from ..errors import ConfigError

METHODS = {}


class MethodError(ConfigError):
    pass


def register(name):
    def deco(cls):
        METHODS[name] = cls
        cls.name = name
        return cls
    return deco


def method_class(name):
    if name not in METHODS:
        raise MethodError(f"unknown method '{name}' (choose from {', '.join(sorted(METHODS))})")
    return METHODS[name]


def build_method(settings):
    return method_class(settings.name)(settings)
