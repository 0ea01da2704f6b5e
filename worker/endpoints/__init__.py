"""The endpoints: their configuration, the HTTP clients, and how their answers are read."""
