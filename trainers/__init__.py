"""Registered trainers. Importing this package registers every method (explicit list)."""
from trainers import zsclip, coop  # noqa: F401
