"""The parts of kopeck.localcluster that need no running cluster: the wrapper go.mod,
the certificates and the kubeconfig reader."""

from __future__ import annotations

import base64
import io
import stat
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kopeck.localcluster.build import (
    Progress,
    _ldflags,
    kube_wrapper_gomod,
    parse_kubernetes_mod,
)
from kopeck.localcluster.certs import CertificateAuthority, service_account_keys
from kopeck.localcluster.handle import ClusterHandle

KUBE_MOD_EXCERPT = """\
module k8s.io/kubernetes

go 1.25.0

godebug default=go1.25

require (
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
\tgithub.com/google/cel-go v0.26.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/kube-aggregator => ./staging/src/k8s.io/kube-aggregator
)
"""


def test_staging_modules_are_replaced_by_their_published_versions() -> None:
    upstream = parse_kubernetes_mod(KUBE_MOD_EXCERPT)
    assert upstream.staging == ["k8s.io/api", "k8s.io/client-go", "k8s.io/kube-aggregator"]
    assert upstream.go_line == "1.25.0"
    gomod = kube_wrapper_gomod("v1.35.4", upstream)
    assert "require k8s.io/kubernetes v1.35.4\n" in gomod
    assert "replace k8s.io/client-go => k8s.io/client-go v0.35.4\n" in gomod
    assert "replace k8s.io/kube-aggregator => k8s.io/kube-aggregator v0.35.4\n" in gomod
    assert "godebug default=go1.25" in gomod
    assert "./staging" not in gomod


def test_version_is_stamped_into_the_binaries() -> None:
    flags = _ldflags("v1.35.4")
    assert "-X k8s.io/component-base/version.gitVersion=v1.35.4" in flags
    assert "-X k8s.io/component-base/version.gitMinor=35" in flags


def test_progress_summary_says_where_the_time_went() -> None:
    progress = Progress(stream=io.StringIO())
    progress.timings = [("download", 10.0), ("compile kube-apiserver", 90.0)]
    lines = progress.summary().splitlines()
    assert lines[0] == "build time 1m40.0s; where it went:"
    assert "90%" in lines[1] and "compile kube-apiserver" in lines[1]


def test_serving_and_client_certificates(tmp_path: Path) -> None:
    ca = CertificateAuthority.create_or_load(tmp_path)
    serving = ca.issue(
        tmp_path, "apiserver", "kube-apiserver", (), ["localhost"], ["127.0.0.1"], server=True
    )
    client = ca.issue(tmp_path, "admin", "kopeck-admin", ["system:masters"])
    ca_cert = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    for pair, usage in ((serving, ExtendedKeyUsageOID.SERVER_AUTH),
                        (client, ExtendedKeyUsageOID.CLIENT_AUTH)):  # fmt: skip
        cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
            x509.ExtendedKeyUsage([usage])
        )
        assert stat.S_IMODE(pair.key.stat().st_mode) == 0o600
    sans = (
        x509.load_pem_x509_certificate(serving.cert.read_bytes())
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    subject = x509.load_pem_x509_certificate(client.cert.read_bytes()).subject
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    # A restarted cluster reuses its CA, so old kubeconfigs stay valid.
    again = CertificateAuthority.create_or_load(tmp_path)
    assert again.pair.cert.read_bytes() == (tmp_path / "ca.crt").read_bytes()
    sa = service_account_keys(tmp_path)
    assert sa.key.read_bytes() == service_account_keys(tmp_path).key.read_bytes()


def _kubeconfig(cluster: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }


def test_handle_from_a_kubeconfig_with_inline_ca(tmp_path: Path) -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            _kubeconfig(
                {
                    "server": "https://127.0.0.1:6443",
                    "certificate-authority-data": base64.b64encode(pem).decode(),
                }
            )
        )
    )
    handle = ClusterHandle.from_kubeconfig(path, Path("/usr/bin/kubectl"), ca_dir=tmp_path / "ca")
    assert handle.server == "https://127.0.0.1:6443"
    assert handle.ca_file is not None and handle.ca_file.read_bytes() == pem
    assert handle.env()["KUBECONFIG"] == str(path.resolve())


def test_handle_from_a_kubeconfig_with_ca_path(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            _kubeconfig({"server": "https://10.0.0.1:443", "certificate-authority": "ca.pem"})
        )
    )
    handle = ClusterHandle.from_kubeconfig(path, Path("kubectl"))
    assert handle.ca_file == (tmp_path / "ca.pem").resolve()
