"""A RunPod Serverless handler shaped like the vLLM worker, for the runpod package's local
development server (``python rp_handler.py --rp_serve_api --rp_api_port PORT``)."""

import time

import runpod


def handler(job):
    job_input = job["input"]
    prompt = job_input.get("prompt")
    if prompt is None:
        prompt = "\n".join(m["content"] for m in job_input.get("messages", []))
    sampling = job_input.get("sampling_params") or {}
    count = min(int(sampling.get("max_tokens", 16)), 16)
    if prompt.startswith("sleep:"):
        time.sleep(float(prompt.split(":")[1].split()[0]))
    text = " ".join(f"w{i}" for i in range(count))
    return [
        {
            "choices": [{"tokens": [text], "finish_reason": "length"}],
            "usage": {"input": len(prompt.split()), "output": count},
        }
    ]


runpod.serverless.start({"handler": handler})
