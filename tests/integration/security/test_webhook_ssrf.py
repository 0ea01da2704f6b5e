"""Webhook SSRF: the URL checked is the URL posted to, at the address checked.

- One parser (urllib3's, the one that connects) reads a webhook URL; anything another parser
  would read differently (a backslash, userinfo, an odd port, a percent-encoded or numeric-looking
  host, dot segments, spaces or control characters) is refused.
- Delivery connects to the very address the check judged (no second DNS lookup), with the Host
  header, TLS server name and certificate check still naming the host.
- An IPv6 address that embeds an IPv4 one (NAT64, 6to4, IPv4-compatible or -mapped, Teredo) is
  judged by the IPv4 address too.

Name resolution goes through the resolver a :class:`WebhookSender` is given, so nothing here
needs a network: receivers are servers on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import ssl
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from tests.integration.security.helpers import TinyServer
from worker import keys
from worker.config.settings_loading import load_settings
from worker.delivery import records
from worker.errors import SettingsError
from worker.webhooks.sender import (
    WebhookPolicy,
    WebhookRefused,
    WebhookSender,
    check_webhook_url,
    is_public_address,
)

pytestmark = pytest.mark.timeout(60)

PUBLIC = "93.184.216.34"
SECRET = SecretStr("whsec-ssrf-test")


def _public(host: str, port: int) -> list[str]:
    return [PUBLIC]


def _no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host} should have been judged without a lookup")


# --------------------------------------------------------------------------- one parser


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379\\@8.8.8.8/",  # urllib3 connects before the backslash
        "http://8.8.8.8\\@127.0.0.1/",
        "http://8.8.8.8/\\..\\admin",
        "http://user:password@8.8.8.8/",  # userinfo, read differently by different parsers
        "http://8.8.8.8@example.com/",
        "http://a@b@example.com/",
        "http://example.com:0/",
        "http://example.com:080/",
        "http://example.com:65536/",
        "http://example.com:+80/",
        "http://example.com:80:80/",
        "http://ex%61mple.com/",  # urllib3 decodes a host that urlsplit keeps
        "http://2130706433/",  # getaddrinfo reads these as 127.0.0.1
        "http://0x7f.1/",
        "http://127.1/",
        "http://0177.0.0.1/",
        "http://8.8.8.8./",
        "http://[fe80::1%25eth0]/",
        "http://exämple.com/",
        "http://example.com/a b",
        "http://ex\tample.com/",
        "http://example.com/\r\nX-Injected: 1",
        "http://example.com/\x00",
        " http://example.com/",
        "http://example.com/in/../admin",
        "http://example.com/in/%2e%2E/admin",
        "http:/example.com/",
        "http://:80/",
    ],
)
def test_urls_two_parsers_could_read_differently_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused):
        check_webhook_url(url, (), resolve=_public)


@pytest.mark.parametrize(
    ("url", "allowlist"),
    [
        ("http://169.254.169.254\\@hooks.example.com/x", ("hooks.example.com",)),
        ("http://127.0.0.1:6379\\@hooks.example.com/", ("hooks.example.com",)),
        ("http://127.0.0.1@hooks.example.com/", ("hooks.example.com",)),
        ("https://svc.example.com/in/../admin", ("https://svc.example.com/in",)),
        ("https://svc.example.com/in/%2e%2e/admin", ("https://svc.example.com/in",)),
    ],
)
def test_the_allowlist_cannot_be_passed_with_a_url_read_two_ways(
    url: str, allowlist: tuple[str, ...]
) -> None:
    with pytest.raises(WebhookRefused):
        check_webhook_url(url, allowlist, resolve=_no_lookup)


@pytest.mark.parametrize(
    "entry",
    ["hooks.example.com:8443", "http://x\\@hooks.example.com/", "https://user:pw@hooks.example.com/",
     "hooks example.com", "ftp://hooks.example.com/", "https://hooks.example.com/in/../x",
     "127.1"],
)  # fmt: skip
def test_an_allowlist_entry_that_cannot_match_as_written_is_refused_at_start(entry: str) -> None:
    with pytest.raises(SettingsError, match=r"GENQUEUE_WEBHOOK_ALLOWLIST: .*entry 2: ") as info:
        load_settings(webhook_allowlist=f"hooks.internal,{entry}")
    assert entry not in str(info.value)  # a URL prefix may hold a token: not repeated
    allowed = "hooks.internal,127.0.0.1,::1,[::1],https://svc.example.com:8443/in,Hooks.Internal."
    assert len(load_settings(webhook_allowlist=allowed).webhook_allowlist) == 6


@pytest.mark.parametrize(
    ("url", "host", "port", "target", "host_header"),
    [
        ("https://Hooks.Example.com/in?x=1&y=%2F#frag", "hooks.example.com", 443, "/in?x=1&y=%2F",
         "hooks.example.com"),
        ("http://8.8.8.8", "8.8.8.8", 80, "/", "8.8.8.8"),
        ("HTTP://hooks.example.com:8080?q", "hooks.example.com", 8080, "/?q",
         "hooks.example.com:8080"),
        ("http://[2606:4700::1111]:8443/x", "2606:4700::1111", 8443, "/x",
         "[2606:4700::1111]:8443"),
        ("https://hooks.example.com:443/a%20b", "hooks.example.com", 443, "/a%20b",
         "hooks.example.com"),
    ],
)  # fmt: skip
def test_what_is_checked_is_what_is_sent(
    url: str, host: str, port: int, target: str, host_header: str
) -> None:
    checked = check_webhook_url(url, (), resolve=lambda h, p: ["2606:4700::1111", PUBLIC])
    assert (checked.target.host, checked.target.port) == (host, port)
    assert checked.target.request_target == target
    assert checked.target.host_header == host_header
    literal = host[0].isdigit() or ":" in host  # judged as written, never looked up
    assert checked.addresses == ((host,) if literal else ("2606:4700::1111", PUBLIC))


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),  # IPv4-mapped public
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2002:808:808::1", True),  # 6to4 of 8.8.8.8
        ("::ffff:169.254.169.254", False),
        ("::ffff:10.0.0.1", False),
        ("::169.254.169.254", False),  # IPv4-compatible
        ("::a9fe:a9fe", False),
        ("::127.0.0.1", False),
        ("::", False),
        ("::1", False),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b:1::a9fe:a9fe", False),  # local-use NAT64
        ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
        ("2002:7f00:1::", False),  # 6to4 of 127.0.0.1
        ("2002:c0a8:101::1", False),  # 6to4 of 192.168.1.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("2001:0:a9fe:a9fe::", False),  # Teredo, server 169.254.169.254
        ("fec0::1", False),  # site-local
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fd00::1", False),
        ("ff02::1", False),
        ("2001:db8::1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("not-an-address", False),
    ],
)
def test_addresses_embedded_in_ipv6_are_judged_too(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    "host",
    ["[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::1]", "[fec0::1]", "[::a9fe:a9fe]",
     "[::ffff:a9fe:a9fe]", "[2001:0:4136:e378:8000:63bf:3fff:fdd2]"],
)  # fmt: skip
def test_hidden_internal_literals_are_refused(host: str) -> None:
    def literal_only(name: str, port: int) -> list[str]:
        return [name]

    with pytest.raises(WebhookRefused, match="private"):
        check_webhook_url(f"http://{host}/", (), resolve=literal_only)


# --------------------------------------------------------------------------- delivery


@pytest.fixture
def finished_task(redis_client: redis.Redis) -> str:
    """A task that ended (cancelled before it ran): its status is final."""
    task_id = "webhook-ssrf-task"
    record = {**records.new_record(None), records.F_CANCEL: "1"}
    redis_client.hset(keys.task_record(task_id), mapping=record)
    return task_id


def _sender(
    redis_client: redis.Redis,
    resolve: Callable[[str, int], list[str]],
    allowlist: tuple[str, ...] = (),
    ca_certs: str | None = None,
) -> WebhookSender:
    policy = WebhookPolicy(secret=SECRET, allowlist=allowlist, timeout_s=1.0)
    return WebhookSender(redis_client, policy, resolve=resolve, ca_certs=ca_certs)


def _ok(_: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
    return 204, {}, b""


@pytest.fixture
def receiver() -> Iterator[TinyServer]:
    with TinyServer(_ok) as server:
        yield server


def _port(server: TinyServer) -> int:
    assert server.server is not None
    return int(server.server.server_address[1])


@pytest.mark.parametrize("allowlist", [(), ("8.8.8.8", "hooks.example.com")])
@pytest.mark.parametrize("decoy", ["8.8.8.8", "hooks.example.com"])
def test_a_backslash_url_is_never_posted_to_loopback(
    redis_client, finished_task, receiver, allowlist, decoy
) -> None:
    sender = _sender(redis_client, _public, allowlist)
    url = f"http://127.0.0.1:{_port(receiver)}\\@{decoy}/x"
    delivery = sender.deliver(finished_task, url, time.time(), 0)
    assert delivery.outcome == "given_up"
    assert receiver.hits == []


def test_the_post_goes_to_the_address_checked_with_the_host_named(
    redis_client, finished_task, receiver, monkeypatch
) -> None:
    # hooks.test exists only in this resolver: reaching the receiver proves it was used.
    seen: list[str] = []

    def respond(handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        seen.append(handler.headers["Host"])
        return 204, {}, b""

    receiver.respond = respond
    sender = _sender(redis_client, lambda h, p: {"hooks.test": ["127.0.0.1"]}[h], ("hooks.test",))
    url = f"http://hooks.test:{_port(receiver)}/in?token=abc"
    with TinyServer(_ok) as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)  # the environment's proxy is not used
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        delivery = sender.deliver(finished_task, url, time.time(), 0)
    assert (delivery.outcome, delivery.status_code) == ("delivered", 204)
    assert receiver.hits == ["POST /in?token=abc"]
    assert seen == [f"hooks.test:{_port(receiver)}"]
    assert proxy.hits == []


def test_a_name_rebound_to_loopback_after_the_check_is_not_posted_to(
    redis_client, finished_task, receiver
) -> None:
    # "localhost" is 127.0.0.1 to the system resolver (no network needed), and public to the
    # check's first lookup: a second lookup at connection time would reach the receiver.
    answers = [[PUBLIC], ["127.0.0.1"]]
    asked: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[min(len(asked), len(answers)) - 1]

    sender = _sender(redis_client, rebinding)
    url = f"http://localhost:{_port(receiver)}/in"
    first = sender.deliver(finished_task, url, time.time(), 0)
    # Sent to PUBLIC, the address checked: unreachable offline (retry), or answered by whatever
    # network there is (not the receiver's 204).
    assert first.outcome in ("retry", "given_up")
    assert first.status_code != 204
    assert asked == ["localhost"]  # one lookup: the one the check judged
    assert receiver.hits == []
    second = sender.deliver(finished_task, url, time.time(), 1)
    assert second.outcome == "given_up"  # now loopback: refused before any connection
    assert receiver.hits == []


# --------------------------------------------------------------------------- TLS


def _certificates(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for hooks.test: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "genqueue test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hooks.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("hooks.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_https_webhooks_verify_the_certificate_against_the_host_name(
    redis_client, finished_task, tmp_path
) -> None:
    ca, cert, key = _certificates(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server_names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: server_names.append(name)
    loopback = {"hooks.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
    allowlist = ("hooks.test", "other.test")
    with TinyServer(_ok, tls=context) as server:
        port = _port(server)
        trusting = _sender(redis_client, lambda h, p: loopback[h], allowlist, str(ca))
        good = trusting.deliver(finished_task, f"https://hooks.test:{port}/in", time.time(), 0)
        assert (good.outcome, good.status_code) == ("delivered", 204)
        assert server.hits == ["POST /in"]
        assert server_names == ["hooks.test"]  # SNI names the host, not the address

        # The same server under another name: its certificate does not match.
        wrong = trusting.deliver(finished_task, f"https://other.test:{port}/in", time.time(), 0)
        assert wrong.outcome == "retry"
        # The default trust store does not know the test CA.
        default = _sender(redis_client, lambda h, p: loopback[h], allowlist)
        untrusted = default.deliver(finished_task, f"https://hooks.test:{port}/in", time.time(), 0)
        assert untrusted.outcome == "retry"
        assert server.hits == ["POST /in"]
