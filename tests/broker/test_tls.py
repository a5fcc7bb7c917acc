"""broker/ops/tls.py and `smsdora tls`: a local CA and a server certificate
that a phone on the LAN can be made to trust; a real TLS handshake with
them against a real uvicorn."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from broker import cli
from broker.ops import tls
from broker.settings import Settings
from tests.e2e.conftest import SECRET, start_server, stop_server

pytestmark = pytest.mark.timeout(60)


def load(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_the_ca_signs_a_server_certificate_for_each_host(tmp_path: Path) -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    made = tls.make(tmp_path, ["192.168.1.5", "broker.lan"], now=now)
    assert made.made_ca
    (ca,) = load(made.ca_cert)
    server, chained_ca = load(made.cert)
    assert chained_ca == ca  # the chain carries the CA after the server certificate
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.1.5")]
    assert san.get_values_for_type(x509.DNSName) == ["broker.lan"]
    assert server.not_valid_after_utc - now <= dt.timedelta(days=825)
    for key in (made.ca_key, made.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_second_run_keeps_the_ca_the_phone_already_trusts(tmp_path: Path) -> None:
    first = tls.make(tmp_path, ["192.168.1.5"])
    (ca,) = load(first.ca_cert)
    again = tls.make(tmp_path, ["192.168.1.6"])
    assert not again.made_ca
    assert load(again.ca_cert) == [ca]
    load(again.cert)[0].verify_directly_issued_by(ca)
    with pytest.raises(ValueError):
        tls.make(tmp_path, [])


async def test_the_broker_serves_https_that_a_client_trusting_the_ca_accepts(
        tmp_path: Path, database_url: str, db: object) -> None:
    made = tls.make(tmp_path / "tls", ["127.0.0.1", "localhost"])
    settings = Settings(home=tmp_path / "home", secret=SECRET, pool_min=1, pool_max=2,
                        tls_cert=made.cert, tls_key=made.key)
    server = await start_server(settings, database_url)
    try:
        url = server.url.replace("http://", "https://")
        trusted = ssl.create_default_context(cafile=str(made.ca_cert))
        async with httpx.AsyncClient(verify=trusted, timeout=10) as client:
            assert (await client.get(url + "/health")).status_code == 200
        async with httpx.AsyncClient(timeout=10) as untrusting:  # the system's CAs only
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(url + "/health")
    finally:
        await stop_server(server)


def test_smsdora_tls_prints_the_files_and_how_to_install_the_ca(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tls"
    assert cli.main(["tls", "--host", "192.168.1.5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "CA certificate" in text and "https://192.168.1.5:" in text
    assert (out / "ca.pem").exists() and (out / "server.key").exists()
    assert cli.main(["--json", "tls", "--host", "192.168.1.5", "--out", str(out)]) == 0
    assert '"madeCa":false' in capsys.readouterr().out


def test_serve_wants_both_tls_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--tls-cert", str(tmp_path / "x.pem")]) == 2
    assert "go together" in capsys.readouterr().err
