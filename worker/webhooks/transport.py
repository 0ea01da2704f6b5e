"""One webhook POST, on a connection to an address that was already judged.

The connection is made to an IP address from :func:`worker.webhooks.url_check.check_webhook_url`,
never
to the host name, so nothing is looked up again between the check and the connection (DNS
rebinding). The request still names the host: in the ``Host`` header, as the TLS server name
(SNI), and as the name the server's certificate must carry. No proxy, no redirects, no retries
here (the caller retries), and the receiver's body is never read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import ConnectTimeoutError

from worker.webhooks.url_check import WebhookTarget

#: At most this many of a host's addresses are tried, one after another, when connecting fails.
MAX_ADDRESSES = 4


@dataclass(frozen=True)
class PostTimeouts:
    """Seconds to connect (per address tried) and to wait for the answer."""

    connect_s: float
    read_s: float


def _pool(
    target: WebhookTarget, address: str, timeouts: PostTimeouts, ca_certs: str
) -> urllib3.HTTPConnectionPool:
    timeout = urllib3.Timeout(connect=timeouts.connect_s, read=timeouts.read_s)
    if target.scheme == "http":
        return urllib3.HTTPConnectionPool(address, target.port, timeout=timeout, maxsize=1)
    return urllib3.HTTPSConnectionPool(
        address,
        target.port,
        timeout=timeout,
        maxsize=1,
        cert_reqs="CERT_REQUIRED",
        ca_certs=ca_certs,
        # SNI and the certificate check name the host, not the address connected to.
        server_hostname=target.host,
        assert_hostname=target.host,
    )


def post_pinned(
    target: WebhookTarget,
    addresses: Sequence[str],
    body: bytes,
    headers: Mapping[str, str],
    timeouts: PostTimeouts,
    ca_certs: str,
) -> int:
    """POST ``body`` to ``target`` through the first of ``addresses`` that accepts a connection;
    the answer's status code.

    :raises urllib3.exceptions.HTTPError: no address could be reached, TLS failed (a certificate
        not trusted or not naming the host), or the receiver did not answer in time.
    """
    last: ConnectTimeoutError | None = None
    for address in list(dict.fromkeys(addresses))[:MAX_ADDRESSES]:
        pool = _pool(target, address, timeouts, ca_certs)
        try:
            response = pool.urlopen(
                "POST",
                target.request_target,
                body=body,
                headers={**headers, "Host": target.host_header},
                redirect=False,
                retries=False,
                assert_same_host=False,
                preload_content=False,
            )
            status = int(response.status)
            response.close()
            return status
        except ConnectTimeoutError as err:  # refused or unreachable too: try the next address
            last = err
        finally:
            pool.close()
    if last is None:
        raise ConnectTimeoutError("no address to connect to")
    raise last
