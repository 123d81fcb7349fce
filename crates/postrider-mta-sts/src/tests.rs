use super::*;

const GOOD: &str = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";

#[test]
fn record_grammar() {
    let id = |r: &[&str]| parse_record(r);
    assert_eq!(
        id(&["v=STSv1; id=20160831085700Z;"]),
        Ok("20160831085700Z".into())
    );
    assert_eq!(id(&["v=STSv1;id=abc"]), Ok("abc".into()));
    assert_eq!(id(&["v=STSv1 ;\tid=abc ; ext-1.x=v_1 ;"]), Ok("abc".into()));
    // Other TXT records at the name are ignored.
    assert_eq!(
        id(&["spf", "v=STSv1; id=a1", "v=STSv10; id=b"]),
        Ok("a1".into())
    );
    assert_eq!(id(&[]), Err(RecordError::Missing));
    assert_eq!(id(&["v=spf1 -all"]), Err(RecordError::Missing));
    assert_eq!(id(&["v=STSv1"]), Err(RecordError::Missing));
    assert_eq!(
        id(&["v=STSv1; id=a", "v=STSv1; id=b"]),
        Err(RecordError::Several(2))
    );
    for bad in [
        "v=STSv1;",
        "v=STSv1; id=",
        "v=STSv1; id=has-dash",
        "v=STSv1; id=123456789012345678901234567890123",
        "v=STSv1; id=a; id=b",
        "v=STSv1;; id=a",
        "v=STSv1; id=a;;",
        "v=STSv1; id=a; junk",
        "v=STSv1; id=a; ext=",
        "v=STSv1; id=a; e xt=1",
        "v=STSv1; id=a; ext=a=b",
    ] {
        assert!(
            matches!(id(&[bad]), Err(RecordError::Malformed(_))),
            "{bad:?} gave {:?}",
            id(&[bad])
        );
    }
    assert!(id(&["v=STSv1; id=12345678901234567890123456789012"]).is_ok());
}

#[test]
fn policy_from_the_rfc() {
    let p = parse_policy(GOOD.as_bytes()).unwrap();
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.max_age, 604_800);
    assert_eq!(
        p.mx,
        ["mail.example.com", "*.example.net", "backupmx.example.com"]
    );
    // LF endings, no final newline, unknown keys, blank lines, upper-case names.
    let p = parse_policy(
        b"version: STSv1\nmode: testing\n\nfuture_key: x y\nmx: MX.Example.ORG.\nmax_age:86400",
    )
    .unwrap();
    assert_eq!((p.mode, p.max_age), (Mode::Testing, 86_400));
    assert_eq!(p.mx, ["mx.example.org"]);
    let none = parse_policy(b"version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
    assert_eq!((none.mode, none.mx.len()), (Mode::None, 0));
    assert_eq!(
        parse_policy(format!("max_age: {MAX_MAX_AGE}\nversion: STSv1\nmode: none\n").as_bytes())
            .map(|p| p.max_age),
        Ok(MAX_MAX_AGE)
    );
}

#[test]
fn bad_policies_are_refused() {
    let with = |from: &str, to: &str| parse_policy(GOOD.replace(from, to).as_bytes());
    assert_eq!(
        with("version: STSv1\r\n", ""),
        Err(PolicyError::Missing("version"))
    );
    assert!(matches!(
        with("STSv1", "STSv2"),
        Err(PolicyError::BadValue {
            field: "version",
            ..
        })
    ));
    assert_eq!(
        with("mode: enforce\r\n", ""),
        Err(PolicyError::Missing("mode"))
    );
    assert!(matches!(
        with("enforce", "Enforce"),
        Err(PolicyError::BadValue { field: "mode", .. })
    ));
    assert_eq!(
        with("max_age: 604800\r\n", ""),
        Err(PolicyError::Missing("max_age"))
    );
    for age in ["-1", "1e5", "", "31557601", "99999999999", "0x10"] {
        assert!(
            matches!(
                with("604800", age),
                Err(PolicyError::BadValue {
                    field: "max_age",
                    ..
                })
            ),
            "{age}"
        );
    }
    assert_eq!(
        parse_policy(b"version: STSv1\nmode: enforce\nmax_age: 10\n"),
        Err(PolicyError::Missing("mx"))
    );
    assert_eq!(
        with("mode: enforce", "mode: enforce\nmode: none"),
        Err(PolicyError::Duplicate("mode"))
    );
    for mx in [
        "*.*.example.net",
        "exa mple.net",
        "-a.example",
        "a..example",
        "*",
        "*.",
        "ex*.net",
        "mail.example.com:25",
    ] {
        assert!(
            matches!(
                with("*.example.net", mx),
                Err(PolicyError::BadValue { field: "mx", .. })
            ),
            "{mx}"
        );
    }
    assert_eq!(
        with("mx: mail.example.com\r\n", "just text\r\n"),
        Err(PolicyError::BadLine(3))
    );
    assert_eq!(with("mx: mail", " mx: mail"), Err(PolicyError::BadLine(3)));
    assert_eq!(
        parse_policy(b"version: STSv1\nmode: none\nmax_age: 1\n\xff"),
        Err(PolicyError::NotText)
    );
    let big = format!("{GOOD}{}", "x: y\n".repeat(MAX_POLICY_BYTES / 5));
    assert_eq!(parse_policy(big.as_bytes()), Err(PolicyError::TooLarge));
}

#[test]
fn mx_patterns_match_as_rfc_8461_section_4_1_says() {
    let p = parse_policy(GOOD.as_bytes()).unwrap();
    assert!(p.allows("mail.example.com"));
    assert!(p.allows("MAIL.Example.COM."));
    assert!(p.allows("mx1.example.net"));
    assert!(!p.allows("example.net"), "a wildcard needs one more label");
    assert!(
        !p.allows("a.b.example.net"),
        "a wildcard covers one label only"
    );
    assert!(!p.allows(".example.net"));
    assert!(!p.allows("mail.example.com.evil"));
    assert!(!p.allows("other.example.com"));
    assert!(!p.allows("xmail.example.com"));
}

fn cached(id: &str, fetched: u64, max_age: u64) -> Cached {
    let body = GOOD.replace("604800", &max_age.to_string());
    Cached::new(id, fetched, body.as_bytes()).unwrap()
}

#[test]
fn cache_files_round_trip() {
    let c = cached("abc123", 1_700_000_000, 86_400);
    assert_eq!(Cached::from_text(&c.to_text()), Ok(c.clone()));
    assert_eq!(c.expires(), 1_700_086_400);
    assert!(c.fresh(1_700_086_399) && !c.fresh(1_700_086_400));
    for bad in [
        "",
        "id: abc\n\nversion: STSv1",
        "id: a-b\nfetched: 1\n\n",
        "id: abc\nfetched: soon\n\n",
        "fetched: 1\nid: abc\n\n",
        "id: abc\nfetched: 1\nextra: 1\n\n",
    ] {
        assert_eq!(Cached::from_text(bad), Err(CacheError::Header), "{bad:?}");
    }
    assert!(matches!(
        Cached::from_text("id: abc\nfetched: 1\n\nversion: STSv9\n"),
        Err(CacheError::Policy(_))
    ));
}

#[test]
fn next_step_keeps_a_fresh_policy_against_downgrade() {
    let c = cached("one", 1000, 100);
    let id = |s: &str| Announcement::Id(s.to_owned());
    // Same id, fresh: no fetch.
    assert_eq!(next_step(&id("one"), Some(&c), 1010), Step::UseCached);
    // New id: fetch, whatever the cache holds.
    assert_eq!(
        next_step(&id("two"), Some(&c), 1050),
        Step::Fetch("two".into())
    );
    // Expired: fetch again even under the same id.
    assert_eq!(
        next_step(&id("one"), Some(&c), 1100),
        Step::Fetch("one".into())
    );
    assert_eq!(next_step(&id("one"), None, 0), Step::Fetch("one".into()));
    // Past half its max_age (or a day), an announced policy is fetched again.
    assert_eq!(next_step(&id("one"), Some(&c), 1049), Step::UseCached);
    assert_eq!(
        next_step(&id("one"), Some(&c), 1050),
        Step::Fetch("one".into())
    );
    let long = cached("one", 0, 7 * 86_400);
    assert_eq!(
        next_step(&id("one"), Some(&long), REFRESH_AFTER - 1),
        Step::UseCached
    );
    assert_eq!(
        next_step(&id("one"), Some(&long), REFRESH_AFTER),
        Step::Fetch("one".into())
    );
    // The record is gone or the lookup failed: a fresh policy still holds, else none.
    for gone in [Announcement::Absent, Announcement::Unknown] {
        assert_eq!(next_step(&gone, Some(&c), 1099), Step::UseCached);
        assert_eq!(next_step(&gone, Some(&c), 1100), Step::NoPolicy);
        assert_eq!(next_step(&gone, None, 1000), Step::NoPolicy);
    }
}
