"""Webhooks: which URLs may be called, how they are signed and delivered."""
