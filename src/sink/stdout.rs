//! The built-in default sink: one JSON object per line on standard output, for trying the bridge
//! without a broker. A record counts as published once its line was written and flushed.

use std::io::Write;
use std::sync::Mutex;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::Record;
use crate::core::deliver::{Ack, DeliveryError};

pub struct StdoutSink {
    out: Mutex<Box<dyn Write + Send>>,
}

/// One output line. The body is a JSON string holding the request body byte for byte (a body
/// may span lines, and a JSON-lines consumer must get one object per line).
#[derive(Serialize)]
struct Line<'a> {
    destination: &'a str,
    key: &'a str,
    partition: u32,
    headers: Headers<'a>,
    body: &'a str,
}

struct Headers<'a>(&'a [(&'static str, String)]);

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        StdoutSink::new()
    }
}

impl StdoutSink {
    pub fn new() -> StdoutSink {
        StdoutSink::with_writer(Box::new(std::io::stdout()))
    }

    /// Writes to `out` instead of standard output (tests).
    pub fn with_writer(out: Box<dyn Write + Send>) -> StdoutSink {
        StdoutSink {
            out: Mutex::new(out),
        }
    }

    pub fn publish(&self, record: &Record) -> Result<Ack, DeliveryError> {
        // The body was validated as JSON, so it is UTF-8.
        let body = std::str::from_utf8(&record.body)
            .map_err(|e| DeliveryError::Rejected(format!("body is not UTF-8: {e}")))?;
        let line = Line {
            destination: &record.destination,
            key: &record.key,
            partition: record.partition,
            headers: Headers(&record.headers),
            body,
        };
        let mut buf =
            serde_json::to_vec(&line).map_err(|e| DeliveryError::Rejected(e.to_string()))?;
        buf.push(b'\n');
        // One write per line under the lock keeps lines whole when requests run in parallel.
        let mut out = self
            .out
            .lock()
            .map_err(|_| DeliveryError::Unavailable("stdout writer poisoned".into()))?;
        out.write_all(&buf)
            .and_then(|()| out.flush())
            .map_err(|e| DeliveryError::Unavailable(format!("writing to stdout: {e}")))?;
        Ok(Ack::STORED)
    }

    pub fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }
}
