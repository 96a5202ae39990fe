"""Tests of the pure scheduling policy (contract 2)."""
