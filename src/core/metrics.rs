//! What every component's metrics share: the latency buckets, the process's own series and the
//! text exposition of a registry. Each component registers its own metrics (labels from fixed
//! sets: command names Tencent documents or `other`, rejection reasons, sink names; never raw
//! error text, user or group ids).

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};

/// Seconds; dense below 10 ms (the normal case) and around Tencent's 2 s deadline.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0,
];

/// A registry with the process's own series: the build's version and, on Linux, CPU, memory
/// and file descriptors.
pub fn registry() -> prometheus::Result<Registry> {
    let registry = Registry::new();
    let build_info = IntGaugeVec::new(
        Opts::new("timbridge_build_info", "Always 1; the version is a label."),
        &["version"],
    )?;
    registry.register(Box::new(build_info.clone()))?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    Ok(registry)
}

/// The Prometheus text exposition of every metric of `registry`.
pub fn encode(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * 1024);
    // Encoding into a Vec fails only for metrics that are malformed by construction.
    if let Err(err) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        tracing::error!(error = %err, "encoding metrics failed");
    }
    out
}
