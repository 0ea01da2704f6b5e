"""RunPod's REST API for one pod: its state, start and stop.

``GET {base}/pods/{podId}`` describes the pod; its ``desiredStatus`` is ``RUNNING``, ``EXITED``
or ``TERMINATED``. ``POST {base}/pods/{podId}/start`` and ``/stop`` answer 200 when accepted,
which does not mean the pod changed (RunPod answers 200 to some calls that do nothing), so the
callers read the state back. The base is ``RUNPOD_REST_API_URL`` (``https://rest.runpod.io/v1``);
the account key goes in ``Authorization: Bearer`` and in nothing else: no error says it.
"""

from __future__ import annotations

import requests

from worker.errors import PodControlError

RUNNING = "RUNNING"
#: (connect, read) seconds of each control call.
CONTROL_TIMEOUTS_S = (5.0, 30.0)


class PodControl:
    """The control calls of the pod ``pod_id``.

    :param base_url: RunPod's REST API, e.g. ``https://rest.runpod.io/v1``.
    :param pod_id: the pod's id.
    :param api_key: the account key (``None``: the calls are sent without one).
    """

    def __init__(self, base_url: str, pod_id: str, api_key: str | None) -> None:
        self.pod_id = pod_id
        self._url = f"{base_url.rstrip('/')}/pods/{pod_id}"
        self._session = requests.Session()
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"

    def status(self) -> str:
        """The pod's ``desiredStatus``."""
        body = self._call("GET", "")
        status = body.get("desiredStatus") if isinstance(body, dict) else None
        if not isinstance(status, str):
            raise PodControlError(f"pod {self.pod_id}: the state answer has no desiredStatus")
        return status

    def start(self) -> None:
        self._call("POST", "/start")

    def stop(self) -> None:
        self._call("POST", "/stop")

    def close(self) -> None:
        self._session.close()

    def _call(self, method: str, path: str) -> object:
        what = f"pod {self.pod_id}: {method} /pods/{{podId}}{path}"
        try:
            response = self._session.request(method, self._url + path, timeout=CONTROL_TIMEOUTS_S)
        except requests.RequestException as err:
            # The exception's text is left out: only its type, never a header.
            raise PodControlError(f"{what} failed: {type(err).__name__}") from None
        if response.status_code != 200:
            raise PodControlError(f"{what} answered {response.status_code}")
        try:
            return response.json()
        except ValueError:
            return None
