"""Name -> class registries for trainers and datasets (the only two registries)."""
import difflib

from engine.errors import UnknownNameError


class Registry:
    """Maps the CoOp-family names (`CoOp`, `Caltech101`, ...) to classes.

    A trainer may also register a config hook (adds its `TRAINER.<M>` defaults)
    and config key aliases (official key names mapped onto ours).
    """

    def __init__(self, kind, check=None):
        self.kind = kind
        self._check = check  # called with each class at registration; raises if it cannot be used
        self._entries = {}
        self._config_hooks = []

    def register(self, name, *, aliases=(), config=None):
        def add(cls):
            if self._check is not None:
                self._check(cls)
            for key in (name, *aliases):
                if key in self._entries:
                    raise KeyError(f"{self.kind} '{key}' is registered twice")
                self._entries[key] = cls
            if config is not None and config not in self._config_hooks:
                self._config_hooks.append(config)
            return cls

        return add

    def get(self, name):
        if name not in self._entries:
            # match case-insensitively first: 'COOP' and 'coop' mean 'CoOp'
            by_lower = {key.lower(): key for key in self._entries}
            if name.lower() in by_lower:
                guess = [by_lower[name.lower()]]
            else:
                guess = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f" Did you mean '{guess[0]}'?" if guess else ""
            if self.kind == "trainer" and not guess:
                hint += " A method kept outside the repository is loaded with --trainer-module FILE_OR_MODULE."
            raise UnknownNameError(f"Unknown {self.kind} '{name}'.{hint} Known: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self):
        return sorted(self._entries)

    def config_hooks(self):
        return list(self._config_hooks)

    def __contains__(self, name):
        return name in self._entries


def check_trainer_class(cls):
    """A trainer names the `TRAINER.<NODE>` holding its keys (and its `PREC`); there is no default node."""
    node = getattr(cls, "config_node", None)
    if not isinstance(node, str) or not node:
        raise TypeError(f"Trainer class {cls.__module__}.{cls.__qualname__} does not set config_node: add the "
                        "class attribute config_node = \"<NODE>\", the TRAINER.<NODE> its config hook adds (with a "
                        "PREC key), e.g. config_node = \"COOP\" for a method that reads CoOp's keys")


TRAINERS = Registry("trainer", check=check_trainer_class)
DATASETS = Registry("dataset")
