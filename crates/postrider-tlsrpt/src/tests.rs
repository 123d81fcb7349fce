use super::*;

#[test]
fn record_grammar() {
    assert_eq!(
        parse_record(&["v=TLSRPTv1; rua=mailto:reports@example.com"]),
        Ok(vec!["mailto:reports@example.com".to_owned()])
    );
    assert_eq!(
        parse_record(&[
            "v=spf1 -all",
            "v=TLSRPTv1;rua=https://reporting.example.com/v1/tlsrpt, mailto:r@example.com , ftp://x;",
        ]),
        Ok(vec![
            "https://reporting.example.com/v1/tlsrpt".to_owned(),
            "mailto:r@example.com".to_owned()
        ])
    );
    assert_eq!(parse_record::<&str>(&[]), Err(RecordError::Missing));
    assert_eq!(
        parse_record(&["v=TLSRPTv10; rua=mailto:a@b"]),
        Err(RecordError::Missing)
    );
    assert_eq!(
        parse_record(&["v=TLSRPTv1; rua=mailto:a@b", "v=TLSRPTv1; rua=mailto:c@d"]),
        Err(RecordError::Several(2))
    );
    for bad in [
        "v=TLSRPTv1;",
        "v=TLSRPTv1; rua=",
        "v=TLSRPTv1; rua=ftp://x",
        "v=TLSRPTv1; rua=mailto:",
        "v=TLSRPTv1; rua=mailto:a@b; rua=mailto:c@d",
        "v=TLSRPTv1; rua=mailto:a@b;; x=1",
        "v=TLSRPTv1; rua=mailto:a@b; junk",
        "v=TLSRPTv1; rua=mailto:a b@c",
        "v=TLSRPTv1; rua=mailto:a@b,,mailto:c@d",
    ] {
        assert!(
            matches!(parse_record(&[bad]), Err(RecordError::Malformed(_))),
            "{bad}"
        );
    }
}

fn sts() -> Policy {
    Policy {
        policy_type: PolicyType::Sts,
        strings: vec![
            "version: STSv1".into(),
            "mode: enforce".into(),
            "mx: *.example.net".into(),
            "max_age: 86400".into(),
        ],
        mx_host: vec!["*.example.net".into()],
    }
}

fn failure(result: ResultType, mx: &str) -> Result<(), Failure> {
    Err(Failure {
        result,
        receiving_mx_hostname: Some(mx.into()),
        receiving_ip: Some("192.0.2.1".into()),
    })
}

/// 2025-12-03T10:00:00Z.
const T: u64 = 1_764_756_000;

#[test]
fn a_report_has_the_fields_of_rfc_8460_section_4_4() {
    let mut a = Aggregates::default();
    let tlsa = Policy {
        policy_type: PolicyType::Tlsa,
        strings: vec!["3 1 1 AB12".into()],
        mx_host: vec![],
    };
    for _ in 0..3 {
        a.record(T, "Example.NET.", &sts(), Ok(()));
    }
    a.record(
        T,
        "example.net",
        &sts(),
        failure(ResultType::CertificateExpired, "mx1.example.net"),
    );
    a.record(
        T,
        "example.net",
        &sts(),
        failure(ResultType::CertificateExpired, "mx1.example.net"),
    );
    a.record(
        T,
        "example.net",
        &tlsa,
        failure(ResultType::ValidationFailure, "mx2.example.net"),
    );
    a.record(T + 86_400, "example.net", &sts(), Ok(()));
    assert_eq!(a.days(), ["2025-12-03", "2025-12-04"]);
    assert_eq!(a.domains("2025-12-03"), ["example.net"]);
    let from = Reporter {
        organization: "mx.relay.example".into(),
        contact: "postmaster@relay.example".into(),
    };
    let r = a.report("2025-12-03", "example.net", &from).unwrap();
    assert_eq!(r["organization-name"], "mx.relay.example");
    assert_eq!(r["contact-info"], "postmaster@relay.example");
    assert_eq!(r["report-id"], "2025-12-03.example.net@mx.relay.example");
    assert_eq!(r["date-range"]["start-datetime"], "2025-12-03T00:00:00Z");
    assert_eq!(r["date-range"]["end-datetime"], "2025-12-03T23:59:59Z");
    let policies = r["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2);
    let s = &policies[0];
    assert_eq!(s["policy"]["policy-type"], "sts");
    assert_eq!(s["policy"]["policy-domain"], "example.net");
    assert_eq!(s["policy"]["mx-host"], json!(["*.example.net"]));
    assert_eq!(s["policy"]["policy-string"][1], "mode: enforce");
    assert_eq!(s["summary"]["total-successful-session-count"], 3);
    assert_eq!(s["summary"]["total-failure-session-count"], 2);
    assert_eq!(
        s["failure-details"],
        json!([{
            "result-type": "certificate-expired",
            "receiving-mx-hostname": "mx1.example.net",
            "receiving-ip": "192.0.2.1",
            "failed-session-count": 2
        }])
    );
    let t = &policies[1];
    assert_eq!(t["policy"]["policy-type"], "tlsa");
    assert_eq!(t["summary"]["total-successful-session-count"], 0);
    assert_eq!(t["failure-details"][0]["result-type"], "validation-failure");
    assert!(a.report("2025-12-03", "other.example", &from).is_none());
    a.remove_day("2025-12-03");
    assert_eq!(a.days(), ["2025-12-04"]);
    assert_eq!(a.to_json(&from)["reports"].as_array().unwrap().len(), 1);
}

#[test]
fn memory_is_bounded() {
    let mut a = Aggregates::default();
    for i in 0..MAX_DOMAINS_PER_DAY + 5 {
        a.record(T, &format!("d{i}.example"), &sts(), Ok(()));
    }
    assert_eq!(a.domains(&day_of(T)).len(), MAX_DOMAINS_PER_DAY);
    assert_eq!(a.dropped(), 5);
    let mut a = Aggregates::default();
    for i in 0..MAX_DETAILS + 50 {
        a.record(
            T,
            "x.example",
            &sts(),
            failure(
                ResultType::CertificateNotTrusted,
                &format!("mx{i}.x.example"),
            ),
        );
    }
    let from = Reporter {
        organization: "o".into(),
        contact: "c".into(),
    };
    let r = a.report(&day_of(T), "x.example", &from).unwrap();
    let details = r["policies"][0]["failure-details"].as_array().unwrap();
    assert_eq!(details.len(), MAX_DETAILS + 1);
    assert_eq!(
        r["policies"][0]["summary"]["total-failure-session-count"],
        (MAX_DETAILS + 50) as u64
    );
    assert!(
        details
            .iter()
            .any(|d| d["failed-session-count"] == 50 && d.get("receiving-mx-hostname").is_none())
    );
}

#[test]
fn days_are_utc() {
    assert_eq!(day_of(0), "1970-01-01");
    assert_eq!(day_of(T), "2025-12-03");
    assert_eq!(day_of(T - 10 * 3600 - 1), "2025-12-02");
}

#[test]
fn a_mailed_report_is_a_multipart_report_with_the_gzipped_json() {
    use base64::Engine;
    use std::io::Read;
    let report = json!({"report-id": "r1", "policies": []});
    let gz = gzip(&report);
    let name = file_name("mx.relay.example", "example.net", 1, 2, "r1");
    assert_eq!(name, "mx.relay.example!example.net!1!2!r1.json.gz");
    let mail = mail(
        "postmaster@mx.relay.example",
        "tlsrpt@example.net",
        "example.net",
        "mx.relay.example",
        "r1@mx.relay.example",
        &name,
        &gz,
        "Thu, 03 Dec 2026 00:05:00 +0000",
    );
    let text = String::from_utf8(mail).unwrap();
    assert!(
        text.contains("\r\nTLS-Report-Domain: example.net\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nTLS-Report-Submitter: mx.relay.example\r\n"));
    assert!(text.contains("Subject: Report Domain: example.net\r\n Submitter: mx.relay.example\r\n Report-ID: <r1@mx.relay.example>\r\n"));
    assert!(text.contains("Content-Type: multipart/report; report-type=\"tlsrpt\";"));
    assert!(text.contains("Content-Type: application/tlsrpt+gzip\r\n"));
    assert!(text.lines().all(|l| l.len() <= 78), "{text}");
    let attachment: String = text
        .split("Content-Transfer-Encoding: base64\r\n")
        .nth(1)
        .unwrap()
        .split("\r\n\r\n")
        .nth(1)
        .unwrap()
        .split("--")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let gz = base64::engine::general_purpose::STANDARD
        .decode(attachment)
        .unwrap();
    let mut json = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut json)
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), report);
}

#[test]
fn counts_survive_a_round_trip_through_their_state() {
    let mut a = Aggregates::default();
    a.record(T, "example.net", &sts(), Ok(()));
    a.record(
        T,
        "example.net",
        &sts(),
        failure(ResultType::CertificateExpired, "mx1.example.net"),
    );
    a.record(T + 86_400, "other.example", &sts(), Ok(()));
    let from = Reporter {
        organization: "o".into(),
        contact: "c".into(),
    };
    let back = Aggregates::from_state(&a.to_state());
    assert_eq!(back.to_json(&from), a.to_json(&from));
    assert_eq!(
        Aggregates::from_state(&json!({"entries": [{"day": 1}, 7]}))
            .days()
            .len(),
        0
    );
    assert_eq!(Aggregates::from_state(&json!("junk")).days().len(), 0);
}
