//! The milter wire format (Sendmail's libmilter, protocol version 6): packets of a 4-byte
//! big-endian length, a command byte and its data. [`Command`]s go from the MTA to the
//! milter, [`Response`]s come back; [`Decoder`] cuts responses out of a byte stream.

use crate::MilterError;

/// Largest packet either side may send: libmilter's own bound on a body chunk (64 KiB) and
/// room for the longest header; anything larger is refused before it is buffered.
pub const MAX_PACKET: usize = 1024 * 1024;

/// Largest body chunk in one `B` command (libmilter's MILTER_CHUNK_SIZE).
pub const BODY_CHUNK: usize = 65535;

/// Protocol version offered: 6, the one of Sendmail 8.14+ and Postfix.
pub const VERSION: u32 = 6;

/// Actions a milter may ask for (SMFIF_*), as negotiated.
pub mod action {
    /// Add headers.
    pub const ADD_HEADERS: u32 = 0x01;
    /// Replace the body.
    pub const CHANGE_BODY: u32 = 0x02;
    /// Add recipients.
    pub const ADD_RCPT: u32 = 0x04;
    /// Remove recipients.
    pub const DELETE_RCPT: u32 = 0x08;
    /// Change or delete headers.
    pub const CHANGE_HEADERS: u32 = 0x10;
    /// Quarantine the message.
    pub const QUARANTINE: u32 = 0x20;
    /// Change the envelope sender.
    pub const CHANGE_FROM: u32 = 0x40;
    /// Add recipients with ESMTP arguments.
    pub const ADD_RCPT_PAR: u32 = 0x80;
    /// Every action this client carries out.
    pub const ALL: u32 = 0xff;
}

/// Protocol steps (SMFIP_*): what a milter does not want sent, or will not answer.
pub mod protocol {
    /// Do not send connect.
    pub const NO_CONNECT: u32 = 0x1;
    /// Do not send HELO.
    pub const NO_HELO: u32 = 0x2;
    /// Do not send MAIL FROM.
    pub const NO_MAIL: u32 = 0x4;
    /// Do not send RCPT TO.
    pub const NO_RCPT: u32 = 0x8;
    /// Do not send the body.
    pub const NO_BODY: u32 = 0x10;
    /// Do not send headers.
    pub const NO_HEADERS: u32 = 0x20;
    /// Do not send end of headers.
    pub const NO_EOH: u32 = 0x40;
    /// No reply to each header.
    pub const NR_HEADER: u32 = 0x80;
    /// Do not send unknown commands.
    pub const NO_UNKNOWN: u32 = 0x100;
    /// Do not send DATA.
    pub const NO_DATA: u32 = 0x200;
    /// The milter may answer SKIP to a body chunk.
    pub const SKIP: u32 = 0x400;
    /// Send rejected recipients too.
    pub const RCPT_REJ: u32 = 0x800;
    /// No reply to connect.
    pub const NR_CONNECT: u32 = 0x1000;
    /// No reply to HELO.
    pub const NR_HELO: u32 = 0x2000;
    /// No reply to MAIL FROM.
    pub const NR_MAIL: u32 = 0x4000;
    /// No reply to RCPT TO.
    pub const NR_RCPT: u32 = 0x8000;
    /// No reply to DATA.
    pub const NR_DATA: u32 = 0x10000;
    /// No reply to unknown commands.
    pub const NR_UNKNOWN: u32 = 0x20000;
    /// No reply to end of headers.
    pub const NR_EOH: u32 = 0x40000;
    /// No reply to a body chunk.
    pub const NR_BODY: u32 = 0x80000;
    /// Header values keep their leading space.
    pub const HEADER_LEADING_SPACE: u32 = 0x100000;
    /// Every step flag this client understands.
    pub const ALL: u32 = 0x1fffff;
}

/// The client's address family in a connect command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Family {
    /// IPv4 ('4').
    Inet,
    /// IPv6 ('6').
    Inet6,
    /// A unix socket ('L').
    Unix,
    /// Not known ('U').
    Unknown,
}

/// A command from the MTA to the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// 'O': version, actions and protocol steps offered.
    Negotiate {
        /// Protocol version.
        version: u32,
        /// Actions the MTA allows.
        actions: u32,
        /// Protocol steps the MTA can leave out.
        protocol: u32,
    },
    /// 'D': macros for the next command (`stage` is that command's byte).
    Macros {
        /// The command they belong to.
        stage: u8,
        /// Name and value pairs, e.g. ("i", queue id), ("{auth_authen}", user).
        pairs: Vec<(String, String)>,
    },
    /// 'C': the client's host name, family, port and address.
    Connect {
        /// Its host name (or `[ip]`).
        hostname: String,
        /// Address family.
        family: Family,
        /// Its port.
        port: u16,
        /// Its address, or the socket path.
        address: String,
    },
    /// 'H': the HELO/EHLO argument.
    Helo(String),
    /// 'M': MAIL FROM: the path with brackets, then ESMTP arguments.
    Mail(Vec<String>),
    /// 'R': RCPT TO: the path with brackets, then ESMTP arguments.
    Rcpt(Vec<String>),
    /// 'T': DATA.
    Data,
    /// 'L': one header field: name and value.
    Header(String, String),
    /// 'N': end of headers.
    EndOfHeaders,
    /// 'B': a chunk of the body (at most [`BODY_CHUNK`] bytes).
    Body(Vec<u8>),
    /// 'E': end of the message; the milter answers with its modifications and a verdict.
    EndOfBody,
    /// 'A': the transaction is aborted (the connection goes on).
    Abort,
    /// 'Q': the connection ends.
    Quit,
    /// 'K': the connection ends but another one starts on this milter connection.
    QuitNewConnection,
}

/// A response from the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// 'O': the milter's version, the actions it wants and the steps it leaves out.
    Negotiate {
        /// Protocol version.
        version: u32,
        /// Actions it may ask for.
        actions: u32,
        /// Steps it does not want, and replies it will not send.
        protocol: u32,
    },
    /// 'a': accept the message (skip the rest of this milter).
    Accept,
    /// 'c': continue.
    Continue,
    /// 'd': accept the message but discard it.
    Discard,
    /// 'r': reject (5xx).
    Reject,
    /// 't': tempfail (4xx).
    Tempfail,
    /// 'y': reply with this SMTP reply text ("550 5.7.1 text").
    ReplyCode(String),
    /// 'p': still working; keep waiting.
    Progress,
    /// 's': skip the rest of the body.
    Skip,
    /// 'q': quarantine with this reason.
    Quarantine(String),
    /// 'h': add a header.
    AddHeader(String, String),
    /// 'i': insert a header at this position (0 = first).
    InsertHeader(u32, String, String),
    /// 'm': change the index-th (1-based) header of this name; an empty value deletes it.
    ChangeHeader(u32, String, String),
    /// 'b': a chunk of the replacement body.
    ReplaceBody(Vec<u8>),
    /// '+': add a recipient.
    AddRcpt(String),
    /// '2': add a recipient with ESMTP arguments.
    AddRcptPar(String, String),
    /// '-': remove a recipient.
    DeleteRcpt(String),
    /// 'e': change the envelope sender (with ESMTP arguments).
    ChangeFrom(String, Option<String>),
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // A NUL inside a string would end it early on the other side.
    out.extend(s.bytes().filter(|&b| b != 0));
    out.push(0);
}

impl Command {
    /// The packet for this command.
    pub fn encode(&self) -> Vec<u8> {
        let mut data = Vec::new();
        let code = match self {
            Command::Negotiate {
                version,
                actions,
                protocol,
            } => {
                put_u32(&mut data, *version);
                put_u32(&mut data, *actions);
                put_u32(&mut data, *protocol);
                b'O'
            }
            Command::Macros { stage, pairs } => {
                data.push(*stage);
                for (n, v) in pairs {
                    put_str(&mut data, n);
                    put_str(&mut data, v);
                }
                b'D'
            }
            Command::Connect {
                hostname,
                family,
                port,
                address,
            } => {
                put_str(&mut data, hostname);
                data.push(match family {
                    Family::Inet => b'4',
                    Family::Inet6 => b'6',
                    Family::Unix => b'L',
                    Family::Unknown => b'U',
                });
                if *family != Family::Unknown {
                    data.extend_from_slice(&port.to_be_bytes());
                    put_str(&mut data, address);
                }
                b'C'
            }
            Command::Helo(h) => {
                put_str(&mut data, h);
                b'H'
            }
            Command::Mail(args) | Command::Rcpt(args) => {
                for a in args {
                    put_str(&mut data, a);
                }
                if matches!(self, Command::Mail(_)) {
                    b'M'
                } else {
                    b'R'
                }
            }
            Command::Data => b'T',
            Command::Header(n, v) => {
                put_str(&mut data, n);
                put_str(&mut data, v);
                b'L'
            }
            Command::EndOfHeaders => b'N',
            Command::Body(chunk) => {
                data.extend_from_slice(&chunk[..chunk.len().min(BODY_CHUNK)]);
                b'B'
            }
            Command::EndOfBody => b'E',
            Command::Abort => b'A',
            Command::Quit => b'Q',
            Command::QuitNewConnection => b'K',
        };
        let mut out = Vec::with_capacity(data.len() + 5);
        put_u32(&mut out, data.len() as u32 + 1);
        out.push(code);
        out.extend_from_slice(&data);
        out
    }
}

/// Reads NUL-terminated strings and big-endian numbers out of a packet's data.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn u32(&mut self) -> Result<u32, MilterError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or(MilterError::Malformed("a number is cut short"))?;
        self.0 = rest;
        Ok(u32::from_be_bytes(*head))
    }

    fn string(&mut self) -> Result<String, MilterError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or(MilterError::Malformed("a string has no NUL"))?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Response {
    /// The response in one packet's command byte and data.
    pub fn parse(code: u8, data: &[u8]) -> Result<Response, MilterError> {
        let mut f = Fields(data);
        let r = match code {
            b'O' => Response::Negotiate {
                version: f.u32()?,
                actions: f.u32()?,
                // Version 2 milters send no protocol word.
                protocol: if f.is_empty() { 0 } else { f.u32()? },
            },
            b'a' => Response::Accept,
            b'c' => Response::Continue,
            b'd' => Response::Discard,
            b'r' => Response::Reject,
            b't' => Response::Tempfail,
            b'p' => Response::Progress,
            b's' => Response::Skip,
            b'y' => Response::ReplyCode(f.string()?),
            b'q' => Response::Quarantine(f.string()?),
            b'h' => Response::AddHeader(f.string()?, f.string()?),
            b'i' => Response::InsertHeader(f.u32()?, f.string()?, f.string()?),
            b'm' => Response::ChangeHeader(f.u32()?, f.string()?, f.string()?),
            b'b' => Response::ReplaceBody(data.to_vec()),
            b'+' => Response::AddRcpt(f.string()?),
            b'2' => Response::AddRcptPar(f.string()?, f.string()?),
            b'-' => Response::DeleteRcpt(f.string()?),
            b'e' => {
                let from = f.string()?;
                let args = if f.is_empty() {
                    None
                } else {
                    Some(f.string()?)
                };
                Response::ChangeFrom(from, args)
            }
            other => return Err(MilterError::UnknownResponse(other)),
        };
        Ok(r)
    }
}

/// Cuts responses out of the bytes read from a milter.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds bytes read from the connection.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole response, if one is buffered. A packet longer than [`MAX_PACKET`] or
    /// of length 0 is an error before its data is read.
    pub fn decode(&mut self) -> Result<Option<Response>, MilterError> {
        let Some(len) = self
            .buf
            .first_chunk::<4>()
            .map(|b| u32::from_be_bytes(*b) as usize)
        else {
            return Ok(None);
        };
        if len == 0 || len > MAX_PACKET {
            return Err(MilterError::PacketSize(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let code = self.buf[4];
        let r = Response::parse(code, &self.buf[5..4 + len]);
        self.buf.drain(..4 + len);
        r.map(Some)
    }

    /// Bytes buffered but not yet a whole response.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}
