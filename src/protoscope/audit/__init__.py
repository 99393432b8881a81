"""Auditing a model without data: patch prototypes, shortcut candidates, mark matching."""
