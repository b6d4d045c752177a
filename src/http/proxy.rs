//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer in front of the
//! bridge (an AWS NLB, HAProxy, ingress-nginx with `use-proxy-protocol`) puts at the start of
//! a connection to say whose it is. Read only from a `--trusted-proxy`, and only when the
//! connection starts with one (a trusted proxy may also speak plain HTTP and say who the
//! client is in `X-Forwarded-For`); from anyone else those bytes are not a header but a bad
//! request.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Version 2's signature: 12 bytes no HTTP request can start with.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// Version 1's longest header, CRLF included.
const V1_MAX: usize = 107;
/// The longest version 2 header read (its own length field allows 64 KiB of TLVs; load
/// balancers send tens of bytes).
const V2_MAX: usize = 16 + 4096;

/// What the start of a connection said about its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// No PROXY header: the connection's first bytes are the client's own.
    Absent,
    /// A header for the proxy's own connection (a health check): the peer is the client.
    Local,
    /// The client the proxy serves.
    Client(SocketAddr),
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed to decide.
    Incomplete,
    /// The header, and how many bytes it took (0 when absent).
    Done(Header, usize),
    Invalid(&'static str),
}

/// Parses a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    if starts_like(buf, V2_SIGNATURE) {
        if buf.len() < 16 {
            return Parsed::Incomplete;
        }
        parse_v2(buf)
    } else if starts_like(buf, V1_PREFIX) {
        if buf.len() < V1_PREFIX.len() {
            return Parsed::Incomplete;
        }
        parse_v1(buf)
    } else {
        Parsed::Done(Header::Absent, 0)
    }
}

/// Whether `buf` is a prefix of `signature` or starts with it.
fn starts_like(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf[..n] == signature[..n]
}

fn parse_v1(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("PROXY v1 header longer than 107 bytes")
        } else {
            Parsed::Incomplete
        };
    };
    let Ok(line) = std::str::from_utf8(&buf[V1_PREFIX.len()..end]) else {
        return Parsed::Invalid("PROXY v1 header is not text");
    };
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["UNKNOWN", ..] => Header::Local,
        [family @ ("TCP4" | "TCP6"), source, _destination, port, _destination_port] => {
            let Ok(ip) = source.parse::<IpAddr>() else {
                return Parsed::Invalid("PROXY v1 source address unreadable");
            };
            let Ok(port) = port.parse::<u16>() else {
                return Parsed::Invalid("PROXY v1 source port unreadable");
            };
            if ip.is_ipv4() != (*family == "TCP4") {
                return Parsed::Invalid("PROXY v1 address does not match its family");
            }
            Header::Client(SocketAddr::new(ip, port))
        }
        _ => return Parsed::Invalid("PROXY v1 header malformed"),
    };
    Parsed::Done(header, end + 2)
}

fn parse_v2(buf: &[u8]) -> Parsed {
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Parsed::Invalid("PROXY v2 header of another version");
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Parsed::Invalid("PROXY v2 header too long");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let addresses = &buf[16..len];
    let header = match version_command & 0x0f {
        0 => Header::Local,
        1 => match buf[13] >> 4 {
            // AF_INET: source, destination, source port, destination port.
            1 if addresses.len() >= 12 => {
                let ip = Ipv4Addr::from(<[u8; 4]>::try_from(&addresses[..4]).unwrap_or_default());
                let port = u16::from_be_bytes([addresses[8], addresses[9]]);
                Header::Client(SocketAddr::new(ip.into(), port))
            }
            // AF_INET6.
            2 if addresses.len() >= 36 => {
                let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&addresses[..16]).unwrap_or_default());
                let port = u16::from_be_bytes([addresses[32], addresses[33]]);
                Header::Client(SocketAddr::new(ip.into(), port))
            }
            // AF_UNSPEC (or AF_UNIX): no address to take; the peer is the client.
            0 | 3 => Header::Local,
            _ => return Parsed::Invalid("PROXY v2 address block too short"),
        },
        _ => return Parsed::Invalid("PROXY v2 command unknown"),
    };
    Parsed::Done(header, len)
}

/// Reads a PROXY header, if the connection starts with one. Returns it and the bytes read past
/// it (the client's first bytes), which the caller replays with [`Rewind`].
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(Header, Bytes)> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match parse(&buf) {
            Parsed::Done(header, len) => {
                buf.advance(len);
                return Ok((header, buf.freeze()));
            }
            Parsed::Invalid(why) => return Err(io::Error::new(io::ErrorKind::InvalidData, why)),
            Parsed::Incomplete => {}
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before its first request",
            ));
        }
    }
}

/// A stream whose first bytes were already read: they are read again first.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Rewind<S> {
        Rewind { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        h.extend_from_slice(addresses);
        h
    }

    #[test]
    fn version_1_gives_the_source() {
        let buf = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 80\r\nPOST / HTTP/1.1\r\n";
        assert_eq!(
            parse(buf),
            Parsed::Done(Header::Client("192.0.2.7:40000".parse().unwrap()), 44)
        );
        let buf = b"PROXY TCP6 2001:db8::1 2001:db8::2 5 80\r\n";
        assert_eq!(
            parse(buf),
            Parsed::Done(
                Header::Client("[2001:db8::1]:5".parse().unwrap()),
                buf.len()
            )
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Done(Header::Local, 15));
    }

    #[test]
    fn version_2_gives_the_source_and_skips_its_tlvs() {
        let mut addresses = vec![192, 0, 2, 7, 198, 51, 100, 1];
        addresses.extend_from_slice(&40000u16.to_be_bytes());
        addresses.extend_from_slice(&80u16.to_be_bytes());
        addresses.extend_from_slice(&[0x04, 0, 1, 0xaa]); // a TLV: ignored
        let mut buf = v2(1, 0x11, &addresses);
        let len = buf.len();
        buf.extend_from_slice(b"\x16\x03\x01"); // a TLS ClientHello follows
        assert_eq!(
            parse(&buf),
            Parsed::Done(Header::Client("192.0.2.7:40000".parse().unwrap()), len)
        );
        let local = v2(0, 0x00, &[]);
        assert_eq!(parse(&local), Parsed::Done(Header::Local, 16));
    }

    #[test]
    fn an_incomplete_header_waits_and_anything_else_is_absent() {
        assert_eq!(parse(b""), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Parsed::Incomplete);
        assert_eq!(parse(&V2_SIGNATURE[..5]), Parsed::Incomplete);
        assert_eq!(parse(&v2(1, 0x11, &[0; 12])[..20]), Parsed::Incomplete);
        assert_eq!(
            parse(b"POST /callback HTTP/1.1\r\n"),
            Parsed::Done(Header::Absent, 0)
        );
        assert_eq!(parse(b"\x16\x03\x01"), Parsed::Done(Header::Absent, 0));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            &b"PROXY TCP4 not-an-ip 1.2.3.4 1 2\r\n"[..],
            b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n",
            b"PROXY HELLO\r\n",
            &[b'P', b'R', b'O', b'X', b'Y', b' ', b'A'].repeat(20),
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        assert!(matches!(parse(&v2(1, 0x11, &[0; 4])), Parsed::Invalid(_)));
        assert!(matches!(parse(&v2(7, 0x11, &[0; 12])), Parsed::Invalid(_)));
    }

    #[tokio::test]
    async fn the_bytes_after_the_header_are_read_again() {
        let mut stream: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 80\r\nPOST /";
        let (header, rest) = read_header(&mut stream).await.unwrap();
        assert_eq!(header, Header::Client("192.0.2.7:40000".parse().unwrap()));
        let mut replayed = String::new();
        Rewind::new(rest, stream)
            .read_to_string(&mut replayed)
            .await
            .unwrap();
        assert_eq!(replayed, "POST /");
    }
}
