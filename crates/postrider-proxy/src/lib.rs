//! The PROXY protocol (HAProxy's, versions 1 and 2) that a load balancer writes before the
//! client's first byte, without I/O: [`parse`] says whether the bytes read so far hold a
//! whole header, how long it is, and which client and server addresses it carries. The wire
//! format is parsed by the `ppp` crate; this module bounds it, decides what a relay accepts,
//! and keeps what the relay uses (addresses, the balancer's TLS facts).
//!
//! The caller peeks at the socket, calls [`parse`] until it returns a [`Preamble`], then
//! consumes exactly [`Preamble::len`] bytes: whatever follows belongs to SMTP (or to the
//! client's TLS handshake on an implicit-TLS listener).

use std::net::{IpAddr, SocketAddr};

use ppp::v2::{self, Type};
use ppp::{HeaderResult, PartialResult, v1};

/// Longest header accepted: a v1 header is at most 107 octets; a v2 header is 16 octets and
/// its addresses and TLVs (a balancer's TLS facts fit easily). Anything longer is refused
/// before it is buffered.
pub const MAX_HEADER: usize = 4096;

/// Longest v1 header, CRLF included (the specification's bound).
const V1_MAX: usize = 107;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a whole header said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preamble {
    /// The header's length in octets: what to consume from the connection.
    pub len: usize,
    /// Protocol version, 1 or 2.
    pub version: u8,
    /// The real client and the address it connected to (an IPv4-mapped IPv6 address as the
    /// IPv4 one); `None` for a v2 `LOCAL` header (the balancer's own health check): the
    /// connection's own addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// TLS as the balancer terminated it (v2 TLVs), if it says so.
    pub tls: Option<BalancerTls>,
    /// The server name the client asked the balancer for (v2 `AUTHORITY`, its SNI).
    pub authority: Option<String>,
}

/// TLS between the client and the balancer, from its v2 `SSL` TLVs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BalancerTls {
    /// `TLSv1.3`, ... (`SSL_VERSION`).
    pub version: Option<String>,
    /// The cipher suite (`SSL_CIPHER`).
    pub cipher: Option<String>,
}

/// Why a connection's first bytes are not an acceptable PROXY header. The connection is
/// closed: what follows cannot be trusted to be in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The bytes do not start like a PROXY header (the balancer does not send one, or this is
    /// a client talking to the relay directly).
    #[error("no PROXY protocol header")]
    Missing,
    /// A header that does not parse.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// Longer than [`MAX_HEADER`].
    #[error("PROXY header over {MAX_HEADER} octets")]
    TooLong,
    /// Addresses a relay cannot use (unix sockets, datagrams, mixed families).
    #[error("unsupported PROXY header: {0}")]
    Unsupported(&'static str),
}

/// Parses the start of a connection. `Ok(None)`: not whole yet, read more (at most
/// [`MAX_HEADER`] octets in all). Bytes beyond the header are not looked at.
pub fn parse(buf: &[u8]) -> Result<Option<Preamble>, ProxyError> {
    let v2 = buf.len().min(V2_SIGNATURE.len());
    let v1 = buf.len().min(6);
    if buf[..v2] != V2_SIGNATURE[..v2] && buf[..v1] != b"PROXY "[..v1] {
        return Err(ProxyError::Missing);
    }
    if buf.len() < 6 {
        return Ok(None);
    }
    // A v1 line is parsed whole and alone, ended by CRLF: the parser takes a line cut in the
    // middle of a port for a malformed one, and an UNKNOWN line for ended by a bare LF.
    if buf.starts_with(b"PROXY ") {
        let head = &buf[..buf.len().min(V1_MAX)];
        return match head.iter().position(|&b| b == b'\n') {
            None if buf.len() >= V1_MAX => Err(ProxyError::Malformed(format!(
                "no line end within {V1_MAX} octets"
            ))),
            None => Ok(None),
            Some(lf) if lf == 0 || head[lf - 1] != b'\r' => {
                Err(ProxyError::Malformed("a line not ended by CRLF".into()))
            }
            Some(lf) => match v1::Header::try_from(&buf[..=lf]) {
                Ok(h) if h.header.len() == lf + 1 => from_v1(&h).map(Some),
                Ok(_) => Err(ProxyError::Malformed("a line the parser read apart".into())),
                Err(e) => Err(ProxyError::Malformed(e.to_string())),
            },
        };
    }
    let header = match HeaderResult::parse(&buf[..buf.len().min(MAX_HEADER)]) {
        r if r.is_incomplete() => {
            return if buf.len() >= MAX_HEADER {
                Err(ProxyError::TooLong)
            } else {
                Ok(None)
            };
        }
        HeaderResult::V1(Ok(_)) => return Err(ProxyError::Malformed("a v1 line".into())),
        HeaderResult::V2(Ok(h)) => from_v2(&h)?,
        HeaderResult::V1(Err(e)) => return Err(ProxyError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => return Err(ProxyError::Malformed(e.to_string())),
    };
    Ok(Some(header))
}

/// A socket address with an IPv4-mapped IPv6 address made IPv4 (a dual-stack balancer
/// writes IPv4 clients so).
fn canonical(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.to_canonical(), port)
}

fn from_v1(h: &v1::Header<'_>) -> Result<Preamble, ProxyError> {
    let addresses = match h.addresses {
        // The balancer does not know the client: taking the balancer for it would make
        // every such connection a client of the balancer's network (relay_networks).
        v1::Addresses::Unknown => {
            return Err(ProxyError::Unsupported(
                "UNKNOWN: the balancer does not name the client",
            ));
        }
        v1::Addresses::Tcp4(a) => Some((
            canonical(IpAddr::V4(a.source_address), a.source_port),
            canonical(IpAddr::V4(a.destination_address), a.destination_port),
        )),
        v1::Addresses::Tcp6(a) => Some((
            canonical(IpAddr::V6(a.source_address), a.source_port),
            canonical(IpAddr::V6(a.destination_address), a.destination_port),
        )),
    };
    Ok(Preamble {
        len: h.header.len(),
        version: 1,
        addresses,
        tls: None,
        authority: None,
    })
}

fn from_v2(h: &v2::Header<'_>) -> Result<Preamble, ProxyError> {
    let local = h.command == v2::Command::Local;
    let addresses = match (local, h.protocol, h.addresses) {
        (true, _, _) => None,
        (false, v2::Protocol::Stream, v2::Addresses::IPv4(a)) => Some((
            canonical(IpAddr::V4(a.source_address), a.source_port),
            canonical(IpAddr::V4(a.destination_address), a.destination_port),
        )),
        (false, v2::Protocol::Stream, v2::Addresses::IPv6(a)) => Some((
            canonical(IpAddr::V6(a.source_address), a.source_port),
            canonical(IpAddr::V6(a.destination_address), a.destination_port),
        )),
        (false, _, v2::Addresses::Unspecified) => {
            return Err(ProxyError::Unsupported(
                "PROXY without the client's address",
            ));
        }
        (false, v2::Protocol::Stream, v2::Addresses::Unix(_)) => {
            return Err(ProxyError::Unsupported("a unix socket client"));
        }
        (false, _, _) => return Err(ProxyError::Unsupported("not a stream connection")),
    };
    let mut tls: Option<BalancerTls> = None;
    let mut authority = None;
    let text = |v: &[u8]| {
        std::str::from_utf8(v)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
    };
    for tlv in h.tlvs() {
        let tlv = tlv.map_err(|e| ProxyError::Malformed(e.to_string()))?;
        match tlv.kind {
            k if k == Type::Authority as u8 => authority = text(&tlv.value),
            k if k == Type::SSL as u8 => {
                // client flags (1 octet), verify (4 octets), then sub-TLVs.
                let Some(sub) = tlv.value.get(5..) else {
                    return Err(ProxyError::Malformed("a short SSL TLV".into()));
                };
                // PP2_CLIENT_SSL: the client connected over TLS.
                if tlv.value.first().is_some_and(|flags| flags & 0x01 != 0) {
                    let facts = tls.get_or_insert_with(BalancerTls::default);
                    for inner in v2::TypeLengthValues::from(sub) {
                        let inner = inner.map_err(|e| ProxyError::Malformed(e.to_string()))?;
                        match inner.kind {
                            k if k == Type::SSLVersion as u8 => facts.version = text(&inner.value),
                            k if k == Type::SSLCipher as u8 => facts.cipher = text(&inner.value),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Preamble {
        len: h.len(),
        version: 2,
        addresses,
        tls,
        authority,
    })
}

#[cfg(test)]
mod tests;
