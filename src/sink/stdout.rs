//! The built-in default sink: one JSON object per line on standard output, for trying the bridge
//! without a broker. A callback counts as published once its line was written and flushed.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Mutex;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::{Ack, SinkError};
use crate::callback::Callback;
use crate::partition::partition;

pub struct StdoutSink {
    partitions: u32,
    out: Mutex<Box<dyn Write + Send>>,
}

/// One output line. The body is a JSON string holding the request body byte for byte (a body
/// may span lines, and a JSON-lines consumer must get one object per line).
#[derive(Serialize)]
struct Line<'a> {
    key: &'a str,
    partition: u32,
    headers: Headers<'a>,
    body: &'a str,
}

struct Headers<'a>(&'a Callback);

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, value) in self.0.headers() {
            map.serialize_entry(name, &value)?;
        }
        if let Some(id) = self.0.dedup_id() {
            map.serialize_entry("dedup-id", &Cow::<str>::Owned(id))?;
        }
        map.end()
    }
}

impl StdoutSink {
    pub fn new(partitions: u32) -> StdoutSink {
        StdoutSink::with_writer(partitions, Box::new(std::io::stdout()))
    }

    /// Writes to `out` instead of standard output (tests).
    pub fn with_writer(partitions: u32, out: Box<dyn Write + Send>) -> StdoutSink {
        StdoutSink {
            partitions,
            out: Mutex::new(out),
        }
    }

    pub fn publish(&self, callback: &Callback) -> Result<Ack, SinkError> {
        // The body was validated as JSON, so it is UTF-8.
        let body = std::str::from_utf8(callback.body())
            .map_err(|e| SinkError::Rejected(format!("body is not UTF-8: {e}")))?;
        let key = callback.partition_key();
        let line = Line {
            key,
            partition: partition(key.as_bytes(), self.partitions),
            headers: Headers(callback),
            body,
        };
        let mut buf = serde_json::to_vec(&line).map_err(|e| SinkError::Rejected(e.to_string()))?;
        buf.push(b'\n');
        // One write per line under the lock keeps lines whole when requests run in parallel.
        let mut out = self
            .out
            .lock()
            .map_err(|_| SinkError::Unavailable("stdout writer poisoned".into()))?;
        out.write_all(&buf)
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::Unavailable(format!("writing to stdout: {e}")))?;
        Ok(Ack { duplicate: false })
    }

    pub fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }
}
