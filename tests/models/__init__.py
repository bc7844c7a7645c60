"""Tests of the pure-computation layer (models/)."""
