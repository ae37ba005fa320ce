"""Tributary's model data collector (filled in by the collector issue)."""
