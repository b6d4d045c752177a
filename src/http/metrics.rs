//! What the callback listener counts before a request exists: connections refused during
//! their opening (the TLS handshake, a trusted proxy's PROXY header), and certificate reloads.
//! Requests, once parsed, are counted by [`crate::ingest::report`].

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Why a connection was closed before its first request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `--tls-client-ca` is set and the client presented no certificate.
    TlsNoClientCertificate,
    /// The client's certificate does not chain to `--tls-client-ca` (or is expired, or not for
    /// client authentication).
    TlsBadClientCertificate,
    /// Any other handshake failure: plain HTTP on the TLS port, no common protocol version...
    TlsHandshake,
    /// The PROXY header or the handshake did not complete within `--header-read-timeout`.
    Timeout,
    /// A trusted proxy sent a PROXY protocol header that cannot be parsed.
    ProxyHeader,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::TlsNoClientCertificate,
        Refusal::TlsBadClientCertificate,
        Refusal::TlsHandshake,
        Refusal::Timeout,
        Refusal::ProxyHeader,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::TlsNoClientCertificate => "tls_no_client_certificate",
            Refusal::TlsBadClientCertificate => "tls_bad_client_certificate",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::Timeout => "timeout",
            Refusal::ProxyHeader => "proxy_header",
        }
    }
}

#[derive(Clone)]
pub struct ListenerMetrics {
    refused: IntCounterVec,
    tls_reloads: IntCounterVec,
    egress_refreshes: IntCounterVec,
    allowed_ranges: IntGauge,
}

impl ListenerMetrics {
    /// Fails only on a programming error (a duplicate name).
    pub fn new(registry: &Registry) -> prometheus::Result<ListenerMetrics> {
        let refused = IntCounterVec::new(
            Opts::new(
                "timbridge_connections_refused_total",
                "Callback connections closed before their first request, by reason: tls_no_client_certificate, tls_bad_client_certificate (not from --tls-client-ca), tls_handshake, timeout (no handshake or PROXY header within --header-read-timeout), proxy_header (a trusted proxy's PROXY header unreadable).",
            ),
            &["reason"],
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "timbridge_tls_reloads_total",
                "Times the TLS files changed on disk and were read again, by result: ok (new handshakes use them), failed (the previous certificate is still served).",
            ),
            &["result"],
        )?;
        let egress_refreshes = IntCounterVec::new(
            Opts::new(
                "timbridge_egress_refreshes_total",
                "Refreshes of Tencent's callback egress list (--allow-tencent-egress), by result: ok, failed (the last list is kept).",
            ),
            &["result"],
        )?;
        let allowed_ranges = IntGauge::new(
            "timbridge_allowed_source_ranges",
            "Source ranges the callback listener serves now (--allow-source and Tencent's egress list); 0: no allow-list, every client served.",
        )?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(egress_refreshes.clone()))?;
        registry.register(Box::new(allowed_ranges.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        // Series that alerts rate() over exist from the first scrape.
        for refusal in Refusal::ALL {
            refused.with_label_values(&[refusal.label()]);
        }
        for result in ["ok", "failed"] {
            tls_reloads.with_label_values(&[result]);
            egress_refreshes.with_label_values(&[result]);
        }
        Ok(ListenerMetrics {
            refused,
            tls_reloads,
            egress_refreshes,
            allowed_ranges,
        })
    }

    pub fn refused(&self, refusal: Refusal) {
        self.refused.with_label_values(&[refusal.label()]).inc();
    }

    /// The allow-list's size now (at start-up and after each refresh).
    pub fn allowed_ranges(&self, ranges: usize) {
        self.allowed_ranges.set(ranges as i64);
    }

    pub fn egress_refreshed(&self, ok: bool, ranges: usize) {
        self.egress_refreshes
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
        self.allowed_ranges(ranges);
    }

    pub fn tls_reloaded(&self, ok: bool) {
        self.tls_reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }
}
