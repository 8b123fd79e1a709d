"""SEV-SNP evidence: attestation reports (v2-v5), their VCEK/VLEK chains, and their verification.

Entry points: :class:`SnpCertificates` (or :func:`load_certificates`) to load certificates,
:func:`verify_snp_report` to verify a report, :func:`verify_snp_chain` to verify a certificate chain alone,
:func:`parse_report` to read a report.
"""

from __future__ import annotations

import os

from teelab.gateway.snp.cert_table import CertTableEntry, build_cert_table, parse_cert_table
from teelab.gateway.snp.certs import AmdCertificate, SnpCertificates, VekExtensions
from teelab.gateway.snp.chain import VerifiedChain, verify_snp_chain
from teelab.gateway.snp.report import SnpReport, TcbVersion, parse_report
from teelab.gateway.snp.verify import verify_snp_report


def load_certificates(source: str | os.PathLike[str] | bytes) -> SnpCertificates:
    """:meth:`SnpCertificates.load`: a DER/PEM file, a folder of them, or bytes (also a certificate table)."""
    return SnpCertificates.load(source)


__all__ = [
    "AmdCertificate",
    "CertTableEntry",
    "SnpCertificates",
    "SnpReport",
    "TcbVersion",
    "VekExtensions",
    "VerifiedChain",
    "build_cert_table",
    "load_certificates",
    "parse_cert_table",
    "parse_report",
    "verify_snp_chain",
    "verify_snp_report",
]
