//! Sending TLS reports (RFC 8460 section 5): the recipient domain's `_smtp._tls` record
//! names where, `https:` addresses get a POST of the gzipped report, `mailto:` addresses an
//! email that the queue manager spools like any other message.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use postrider_delivery::TrustRoots;
use postrider_plugin_host::Dns;

/// Limit of one report POST.
const POST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `domain` wants its TLS reports: the `rua` URIs of its `_smtp._tls` record.
pub async fn rua(dns: &dyn Dns, domain: &str) -> Result<Vec<String>, String> {
    let records = dns
        .lookup_txt(&format!("_smtp._tls.{domain}"))
        .await
        .map_err(|e| e.to_string())?;
    postrider_tlsrpt::parse_record(&records).map_err(|e| e.to_string())
}

/// The address of a `mailto:` URI (without `?` fields), if it is one.
pub fn mailto(uri: &str) -> Option<&str> {
    let rest = uri
        .get(..7)?
        .eq_ignore_ascii_case("mailto:")
        .then(|| &uri[7..])?;
    let address = rest.split('?').next().unwrap_or(rest);
    address.contains('@').then_some(address)
}

/// POSTs `gzipped` to the `https:` URI `uri` as `application/tlsrpt+gzip`; any 2xx is
/// success.
pub async fn post(
    dns: &dyn Dns,
    roots: &TrustRoots,
    uri: &str,
    gzipped: Vec<u8>,
) -> Result<(), String> {
    let parsed: hyper::Uri = uri.parse().map_err(|e| format!("bad URI: {e}"))?;
    if parsed.scheme_str() != Some("https") {
        return Err("not an https URI".into());
    }
    let host = parsed.host().ok_or("no host")?.to_owned();
    let port = parsed.port_u16().unwrap_or(443);
    let path = parsed
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let request = hyper::Request::post(path)
        .header(hyper::header::CONTENT_TYPE, "application/tlsrpt+gzip")
        .body(Full::new(Bytes::from(gzipped)))
        .map_err(|e| e.to_string())?;
    let sent = postrider_delivery::https::send(dns, roots, &host, port, request, 64 * 1024);
    match tokio::time::timeout(POST_TIMEOUT, sent).await {
        Ok(Ok(r)) if (200..300).contains(&r.status) => Ok(()),
        Ok(Ok(r)) => Err(format!("HTTP status {}", r.status)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {POST_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailto_addresses() {
        assert_eq!(
            mailto("mailto:tlsrpt@example.net"),
            Some("tlsrpt@example.net")
        );
        assert_eq!(mailto("MAILTO:a@b?subject=x"), Some("a@b"));
        assert_eq!(mailto("https://example.net/x"), None);
        assert_eq!(mailto("mailto:nobody"), None);
        assert_eq!(mailto("mail"), None);
    }
}
