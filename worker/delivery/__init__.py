"""Getting each message run once: the broker transport, task scripts, heartbeat, sweep, results."""
