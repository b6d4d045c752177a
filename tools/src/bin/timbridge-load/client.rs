//! A minimal HTTP/1.1 keep-alive client: one request at a time per connection, like Tencent's
//! sender. Lean on purpose, so that on a small machine the load generator is not the bottleneck.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Connection {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

pub struct Response {
    pub status: u16,
    pub ok_body: bool,
}

impl Connection {
    pub fn new(addr: SocketAddr) -> Connection {
        Connection {
            addr,
            stream: None,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Sends one request (head and body already encoded) and reads the answer. On any error the
    /// connection is dropped; the next call reconnects.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<Response> {
        let result = self.exchange(request).await;
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self, request: &[u8]) -> io::Result<Response> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("no connection"))?;
        stream.write_all(request).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                break pos + 4;
            }
            read_more(stream, &mut self.buf).await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 head"))?;
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
        let mut length = 0usize;
        let mut close = false;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("connection")
                    && value.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        while self.buf.len() < head_end + length {
            read_more(stream, &mut self.buf).await?;
        }
        let body = &self.buf[head_end..head_end + length];
        let ok_body = find(body, br#""ActionStatus":"OK""#).is_some();
        if close {
            self.stream = None;
        }
        Ok(Response { status, ok_body })
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
