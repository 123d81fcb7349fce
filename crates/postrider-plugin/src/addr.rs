//! Mail address helpers (pure functions, testable natively).
//!
//! The host hands plugins addresses as the client gave them, without angle brackets:
//! `alice+news@Example.ORG`; the null sender is the empty string. These helpers split and
//! normalise them for comparisons. They do not validate: the relay has already done that.

/// Splits `local@domain` at the **last** `@` (a quoted local part may contain `@`).
/// Surrounding `<`/`>` are ignored. `None` for the null sender or an address without `@`.
///
/// ```
/// use postrider_plugin::addr::split;
/// assert_eq!(split("alice@example.org"), Some(("alice", "example.org")));
/// assert_eq!(split("\"a@b\"@example.org"), Some(("\"a@b\"", "example.org")));
/// assert_eq!(split(""), None);
/// ```
pub fn split(address: &str) -> Option<(&str, &str)> {
    let a = address.trim();
    let a = a.strip_prefix('<').unwrap_or(a);
    let a = a.strip_suffix('>').unwrap_or(a);
    let (local, domain) = a.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some((local, domain))
}

/// The domain of an address, normalised with [`normalize_domain`]; `None` as for [`split`].
///
/// ```
/// assert_eq!(postrider_plugin::addr::domain("bob@Mail.Example.ORG."), Some("mail.example.org".into()));
/// ```
pub fn domain(address: &str) -> Option<String> {
    split(address).map(|(_, d)| normalize_domain(d))
}

/// The local part of an address as given; `None` as for [`split`].
pub fn local_part(address: &str) -> Option<&str> {
    split(address).map(|(l, _)| l)
}

/// A domain for comparison: lower case, without a trailing dot, surrounding whitespace
/// removed. (Unicode domains are lower-cased too; no IDNA conversion is done.)
pub fn normalize_domain(domain: &str) -> String {
    let d = domain.trim();
    d.strip_suffix('.').unwrap_or(d).to_lowercase()
}

/// The local part without its sub-address ("detail"): everything from the first of
/// `separators` on is dropped, e.g. `alice+news` → `alice` with `"+"`. A local part that
/// starts with a separator is returned unchanged (there would be nothing left).
///
/// ```
/// use postrider_plugin::addr::strip_detail;
/// assert_eq!(strip_detail("alice+news", "+"), "alice");
/// assert_eq!(strip_detail("bob-lists-x", "+-"), "bob");
/// assert_eq!(strip_detail("+odd", "+"), "+odd");
/// ```
pub fn strip_detail<'a>(local: &'a str, separators: &str) -> &'a str {
    match local.find(|c| separators.contains(c)) {
        Some(0) | None => local,
        Some(i) => &local[..i],
    }
}

/// An address for comparison: local part lower-cased (most systems treat it
/// case-insensitively), domain normalised. The null sender stays empty; an address without
/// `@` is just lower-cased.
pub fn normalize(address: &str) -> String {
    match split(address) {
        Some((l, d)) => format!("{}@{}", l.to_lowercase(), normalize_domain(d)),
        None => address
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting() {
        assert_eq!(split("<a@b>"), Some(("a", "b")));
        assert_eq!(split("a@"), None);
        assert_eq!(split("@b"), None);
        assert_eq!(split("postmaster"), None);
        assert_eq!(local_part("x.y@z"), Some("x.y"));
    }

    #[test]
    fn normalizing() {
        assert_eq!(normalize("Alice@Example.ORG"), "alice@example.org");
        assert_eq!(normalize(""), "");
        assert_eq!(normalize("<>"), "");
        assert_eq!(normalize("Postmaster"), "postmaster");
        assert_eq!(normalize_domain(" Example.COM. "), "example.com");
    }
}
