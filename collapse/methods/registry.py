METHODS = {}


class MethodError(ValueError):
    pass


def register(name):
    def deco(cls):
        METHODS[name] = cls
        cls.name = name
        return cls
    return deco


def build_method(cfg):
    if cfg.name not in METHODS:
        raise MethodError(f"unknown method '{cfg.name}' (choose from {', '.join(sorted(METHODS))})")
    return METHODS[cfg.name](cfg)
