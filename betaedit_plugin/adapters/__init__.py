"""Adapters that plug the editors into other frameworks (EasyEdit)."""
