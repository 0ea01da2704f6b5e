"""What protects an endpoint across all workers: the concurrency cap, rate limits, the breaker."""
