"""Our lean Dassl: config, registries, data, trainer loop, evaluation, checkpoints."""
from engine.registry import DATASETS, TRAINERS, Registry

__all__ = ["DATASETS", "TRAINERS", "Registry"]
