"""What operators see: metrics, task log lines, Flower's events and summaries, the completion
stream."""
