"""Name -> class registries for trainers and datasets (the only two registries)."""
import difflib

from engine.errors import UnknownNameError


class Registry:
    """Maps the CoOp-family names (`CoOp`, `Caltech101`, ...) to classes.

    A trainer may also register a config hook (adds its `TRAINER.<M>` defaults)
    and config key aliases (official key names mapped onto ours).
    """

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}
        self._config_hooks = []

    def register(self, name, *, aliases=(), config=None):
        def add(cls):
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


TRAINERS = Registry("trainer")
DATASETS = Registry("dataset")
