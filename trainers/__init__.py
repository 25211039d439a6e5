"""Registered trainers. Importing this package registers every method (explicit list)."""
from trainers import zsclip, coop  # noqa: F401
from trainers import maple, kgcoop, ivlp, promptsrc, promptkd  # noqa: F401
from trainers import dpl, dgprompt  # noqa: F401
from trainers import dpc  # noqa: F401  (DPC on every backbone above)
