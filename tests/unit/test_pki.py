"""The local PKI gives the API server a certificate clients can verify on every address they
use, and gives each identity the groups RBAC expects."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from lorafleet_testbed.pki import create_pki


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_serving_certificate_covers_loopback_and_service_names(tmp_path: Path) -> None:
    pki = create_pki(tmp_path)
    cert = _load(pki.serving_cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "kubernetes.default.svc" in sans.get_values_for_type(x509.DNSName)
    cert.verify_directly_issued_by(_load(pki.ca_cert))


def test_identities_and_key_permissions(tmp_path: Path) -> None:
    pki = create_pki(tmp_path)
    admin = _load(pki.admin.cert).subject
    assert admin.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    kcm = _load(pki.controller_manager.cert).subject
    assert (
        kcm.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-controller-manager"
    )
    assert not kcm.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    for key in (pki.ca_key, pki.serving_key, pki.sa_private_key, pki.admin.key):
        assert key.stat().st_mode & 0o077 == 0, f"{key.name} is readable by others"
