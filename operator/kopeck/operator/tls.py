"""TLS for the ingest and webhook servers: load tls.crt/tls.key, or make a CA and a cert.

In a cluster the files come from a Secret (cert-manager or our own); locally the operator
generates a small CA and a server certificate for the addresses the apiserver and the
probes use, and hands the CA to the ValidatingWebhookConfiguration as its caBundle.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServingCert:
    """Paths of the serving certificate, its key, and the CA that signed it."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def server_context(self, client_ca: Path | None = None) -> ssl.SSLContext:
        """A server context: TLS 1.2 minimum (1.3 preferred by negotiation).

        With ``client_ca`` the handshake requires a client certificate signed by exactly that
        CA (the system trust store is not loaded), so only its holder can call the server.
        """
        if client_ca is None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_verify_locations(cafile=str(client_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx

    @property
    def ca_pem(self) -> bytes:
        """The CA bundle for clients (apiserver, probes)."""
        return self.ca_file.read_bytes()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_serving_cert(directory: Path, hosts: list[str]) -> ServingCert:
    """Use tls.crt/tls.key/ca.crt in `directory`, generating them when absent."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = ServingCert(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    if cert.cert_file.exists() and cert.key_file.exists():
        if not cert.ca_file.exists():  # a self-signed serving cert is its own CA
            cert.ca_file.write_bytes(cert.cert_file.read_bytes())
        return cert
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("kopeck-operator-ca"))
        .issuer_name(_name("kopeck-operator-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert.key_file.write_bytes(_pem_key(key))
    cert.key_file.chmod(0o600)
    cert.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    cert.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return cert
