"""RunPod pods that run when there is work: the control API client, the gate a task passes
before it seeks a slot (starting the pod when it is stopped), and the idle stop."""
