"""Reading genqueue's configuration: the settings from the environment (and the warnings for
variables it does not know), and the TOML files of endpoints and tenants, line by line."""
