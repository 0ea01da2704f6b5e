"""genqueue's Redis: its clients and connection pools, Sentinel, and riding out an outage."""
