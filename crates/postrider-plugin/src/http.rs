//! Outgoing HTTP through `wasi:http/outgoing-handler` (cargo feature `http`).
//!
//! The host sends a request only to an origin the plugin's `allow_http` grants; any other
//! gets [`HttpError::Denied`]. Bodies are read whole, up to the host's cap
//! (`max_http_response_kb`); the plugin's call deadline bounds the whole exchange.
//!
//! ```ignore
//! let resp = postrider_plugin::http::Request::post("http://127.0.0.1:11333/checkv2", body)
//!     .header("Content-Type", "message/rfc822")
//!     .send()?;
//! if resp.status == 200 { /* resp.body */ }
//! ```
//!
//! Outside a wasm host, [`Request::send`] returns [`HttpError::Unavailable`].

use std::fmt;
use std::time::Duration;

/// Why a request got no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The plugin has no grant for this origin.
    Denied,
    /// The URL is not `http://` or `https://` with a host.
    BadUrl(String),
    /// Connecting, sending or receiving failed (the host's error code, or a body too big).
    Failed(String),
    /// Not running inside the host (native unit tests).
    Unavailable,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Denied => f.write_str("denied: no allow_http grant for this origin"),
            HttpError::BadUrl(u) => write!(f, "bad URL {u:?}"),
            HttpError::Failed(why) => write!(f, "failed: {why}"),
            HttpError::Unavailable => f.write_str("HTTP is unavailable outside the host"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A response: status, headers and the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header fields in order, names lower-cased by the host.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// A request to build and send.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    first_byte_timeout: Option<Duration>,
}

/// The parts of an `http(s)://authority/path?query` URL.
#[derive(Debug, PartialEq, Eq)]
struct Url<'a> {
    https: bool,
    authority: &'a str,
    path_with_query: String,
}

fn split_url(url: &str) -> Result<Url<'_>, HttpError> {
    let bad = || HttpError::BadUrl(url.to_owned());
    let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(bad());
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains(['@', ' ', '#']) {
        return Err(bad());
    }
    Ok(Url {
        https,
        authority,
        path_with_query: if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        },
    })
}

impl Request {
    /// A GET of `url`.
    pub fn get(url: &str) -> Request {
        Request::new("GET", url, None)
    }

    /// A POST of `body` to `url`.
    pub fn post(url: &str, body: Vec<u8>) -> Request {
        Request::new("POST", url, Some(body))
    }

    /// Any method.
    pub fn new(method: &str, url: &str, body: Option<Vec<u8>>) -> Request {
        Request {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body,
            first_byte_timeout: None,
        }
    }

    /// Adds a header field.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// How long to wait for the response head (the call's deadline applies in any case).
    pub fn timeout(mut self, wait: Duration) -> Request {
        self.first_byte_timeout = Some(wait);
        self
    }

    /// The method (for native tests of code that builds requests).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The body, if any (for native tests of code that builds requests).
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// Sends it and reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        let url = split_url(&self.url)?;
        imp::send(&self, &url)
    }
}

#[cfg(all(target_arch = "wasm32", feature = "http"))]
mod imp {
    use super::{HttpError, Request, Response, Url};
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions,
        Scheme,
    };
    use wasip2::io::streams::StreamError;

    fn failed(e: impl std::fmt::Debug) -> HttpError {
        HttpError::Failed(format!("{e:?}"))
    }

    fn code(e: ErrorCode) -> HttpError {
        match e {
            ErrorCode::HttpRequestDenied => HttpError::Denied,
            other => failed(other),
        }
    }

    pub(super) fn send(req: &Request, url: &Url<'_>) -> Result<Response, HttpError> {
        let mut headers = req.headers.clone();
        if let Some(body) = &req.body {
            headers.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
        let fields = Fields::from_list(&headers).map_err(failed)?;
        let out = OutgoingRequest::new(fields);
        let method = match req.method.as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "HEAD" => Method::Head,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_owned()),
        };
        let bad = || HttpError::BadUrl(req.url.clone());
        out.set_method(&method).map_err(|()| bad())?;
        let scheme = if url.https {
            Scheme::Https
        } else {
            Scheme::Http
        };
        out.set_scheme(Some(&scheme)).map_err(|()| bad())?;
        out.set_authority(Some(url.authority)).map_err(|()| bad())?;
        out.set_path_with_query(Some(&url.path_with_query))
            .map_err(|()| bad())?;
        let body = out.body().map_err(failed)?;
        let options = req.first_byte_timeout.map(|t| {
            let o = RequestOptions::new();
            // A host that does not support it still has the call's deadline.
            let _ = o.set_first_byte_timeout(Some(t.as_nanos() as u64));
            o
        });
        let pending = outgoing_handler::handle(out, options).map_err(code)?;
        {
            let stream = body.write().map_err(failed)?;
            for chunk in req.body.as_deref().unwrap_or_default().chunks(4096) {
                stream.blocking_write_and_flush(chunk).map_err(failed)?;
            }
        }
        OutgoingBody::finish(body, None).map_err(code)?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(e))) => return Err(code(e)),
            _ => return Err(HttpError::Failed("no response".into())),
        };
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response.consume().map_err(failed)?;
        let mut body = Vec::new();
        {
            let stream = incoming.stream().map_err(failed)?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(bytes) => body.extend_from_slice(&bytes),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(HttpError::Failed(e.to_debug_string()));
                    }
                }
            }
        }
        let _trailers = IncomingBody::finish(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

#[cfg(not(all(target_arch = "wasm32", feature = "http")))]
mod imp {
    use super::{HttpError, Request, Response, Url};

    pub(super) fn send(_req: &Request, _url: &Url<'_>) -> Result<Response, HttpError> {
        Err(HttpError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:11333/checkv2?x=1").unwrap(),
            Url {
                https: false,
                authority: "127.0.0.1:11333",
                path_with_query: "/checkv2?x=1".into()
            }
        );
        let u = split_url("https://api.example?q").unwrap();
        assert!(u.https);
        assert_eq!(
            (u.authority, u.path_with_query.as_str()),
            ("api.example", "/?q")
        );
        assert_eq!(split_url("https://[::1]").unwrap().path_with_query, "/");
        for bad in ["ftp://x", "http://", "http:///x", "http://u@x/", "x"] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outside_the_host_requests_are_unavailable() {
        let r = Request::post("http://127.0.0.1/x", b"hi".to_vec()).header("A", "b");
        assert_eq!((r.method(), r.body()), ("POST", Some(&b"hi"[..])));
        let e = Request::get("http://127.0.0.1/").send().unwrap_err();
        assert_eq!(e, HttpError::Unavailable);
        assert!(Request::get("nope").send().is_err());
    }
}
