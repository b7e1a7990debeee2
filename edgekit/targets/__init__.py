"""Targets: profiles (data files) and families (one small module each)."""

from .base import Compiled, TargetFamily, TargetReport
from .families import FAMILY_REGISTRY, family_for
from .profiles import Profile, get_profile, load_profiles

__all__ = ["Compiled", "FAMILY_REGISTRY", "Profile", "TargetFamily", "TargetReport", "family_for",
           "get_profile", "load_profiles"]
