"""TLS for https targets: verified, with a private CA where given; off only when asked."""

from __future__ import annotations

import ssl

from ingest.core.config import TargetConfig
from ingest.core.errors import ConfigError


def ssl_context(target: TargetConfig) -> ssl.SSLContext | None:
    """Verified TLS for https targets (private CA via --ca-file); verification is off only with --insecure."""
    if not target.spec.base_url.startswith("https://"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use --ca-file {target.ca_file}: {exc}") from exc
    if target.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
