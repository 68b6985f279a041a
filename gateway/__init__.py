"""Meshgate package."""
