"""Shared fixtures. Simulation failures print the seed and the replay command."""
