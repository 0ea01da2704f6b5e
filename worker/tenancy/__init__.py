"""Tenants: the tenants file and its reloads, and the keys that name a tenant."""
