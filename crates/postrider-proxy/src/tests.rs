use super::*;

fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
    out.extend_from_slice(addresses);
    out.extend_from_slice(tlvs);
    out
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out
}

const V4: [u8; 12] = [192, 0, 2, 7, 198, 51, 100, 1, 0xc3, 0x50, 0, 25];

#[test]
fn v1_tcp4_tcp6_and_unknown() {
    let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 50000 25\r\nEHLO x\r\n";
    let p = parse(line).unwrap().unwrap();
    assert_eq!(p.len, 44);
    assert_eq!(p.version, 1);
    assert_eq!(
        p.addresses,
        Some((
            "192.0.2.7:50000".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap()
        ))
    );
    let p = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 587\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(
        p.addresses.unwrap().0,
        "[2001:db8::7]:50000".parse().unwrap()
    );
    // UNKNOWN names no client: refused (the balancer is not the client).
    assert!(matches!(
        parse(b"PROXY UNKNOWN\r\n"),
        Err(ProxyError::Unsupported(_))
    ));
    // A dual-stack balancer writes IPv4 clients as IPv4-mapped IPv6.
    let p = parse(b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:198.51.100.1 50000 25\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(
        p.addresses,
        Some((
            "192.0.2.7:50000".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap()
        ))
    );
}

#[test]
fn partial_headers_ask_for_more_at_every_length() {
    let v1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 50000 25\r\n";
    let v2 = v2(1, 0x11, &V4, &tlv(0x02, b"mx.example.org"));
    for whole in [&v1[..], &v2[..]] {
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(parse(whole).unwrap().is_some());
    }
}

#[test]
fn v2_proxy_local_and_tlvs() {
    let mut ssl = vec![0x01, 0, 0, 0, 0];
    ssl.extend(tlv(0x21, b"TLSv1.3"));
    ssl.extend(tlv(0x23, b"TLS_AES_256_GCM_SHA384"));
    let tlvs = [tlv(0x02, b"mx.example.org"), tlv(0x20, &ssl)].concat();
    let bytes = v2(1, 0x11, &V4, &tlvs);
    let mut with_smtp = bytes.clone();
    with_smtp.extend_from_slice(b"\x16\x03\x01");
    let p = parse(&with_smtp).unwrap().unwrap();
    assert_eq!(p.len, bytes.len());
    assert_eq!(p.version, 2);
    assert_eq!(
        p.addresses,
        Some((
            "192.0.2.7:50000".parse().unwrap(),
            "198.51.100.1:25".parse().unwrap()
        ))
    );
    assert_eq!(p.authority.as_deref(), Some("mx.example.org"));
    assert_eq!(
        p.tls,
        Some(BalancerTls {
            version: Some("TLSv1.3".into()),
            cipher: Some("TLS_AES_256_GCM_SHA384".into())
        })
    );
    // LOCAL: the balancer's own health check; the connection's addresses stand.
    let p = parse(&v2(0, 0x00, &[], &[])).unwrap().unwrap();
    assert_eq!((p.len, p.addresses), (16, None));
    // IPv6.
    let mut v6 = [0u8; 36];
    v6[15] = 7;
    v6[31] = 1;
    v6[32..].copy_from_slice(&[0xc3, 0x50, 0, 25]);
    let p = parse(&v2(1, 0x21, &v6, &[])).unwrap().unwrap();
    assert_eq!(p.addresses.unwrap().0, "[::7]:50000".parse().unwrap());
}

#[test]
fn what_a_relay_refuses() {
    assert_eq!(parse(b"EHLO client.example\r\n"), Err(ProxyError::Missing));
    assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::Missing));
    assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyError::Missing));
    for bad in [
        &b"PROXY TCP4 300.0.2.7 198.51.100.1 50000 25\r\n"[..],
        b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 25\r\n",
        b"PROXY TCP9 a b 1 2\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 50000 25\n",
    ] {
        assert!(
            matches!(parse(bad), Err(ProxyError::Malformed(_))),
            "{:?}: {:?}",
            String::from_utf8_lossy(bad),
            parse(bad)
        );
    }
    // A v1 line that never ends.
    let mut long = b"PROXY TCP4 ".to_vec();
    long.extend(std::iter::repeat_n(b'1', 200));
    assert!(parse(&long).is_err());
    // PROXY without addresses, datagrams and unix sockets: no client a relay can use.
    assert!(matches!(
        parse(&v2(1, 0x00, &[], &[])),
        Err(ProxyError::Unsupported(_))
    ));
    assert!(matches!(
        parse(&v2(1, 0x12, &V4, &[])),
        Err(ProxyError::Unsupported(_))
    ));
    assert!(matches!(
        parse(&v2(1, 0x31, &[0u8; 216], &[])),
        Err(ProxyError::Unsupported(_))
    ));
    // A v2 header announcing more than the limit is refused once the limit is read.
    let huge = v2(1, 0x11, &V4, &tlv(0x04, &vec![0u8; MAX_HEADER]));
    assert_eq!(parse(&huge[..MAX_HEADER]), Err(ProxyError::TooLong));
    // A TLV running past the header.
    let mut bad_tlv = v2(1, 0x11, &V4, &tlv(0x02, b"abc"));
    let n = bad_tlv.len();
    bad_tlv[n - 4] = 0x09;
    assert!(parse(&bad_tlv).is_err());
}
