//! Local delivery into Maildir: one directory per recipient under a root, each message written
//! to `tmp/`, synced, then renamed into `new/` and the directory synced (and the parents of
//! any directory created for it), as the Maildir convention requires, so a reader never sees a
//! partial message and a crash loses nothing that was reported delivered. A failure after the
//! rename (syncing `new/`) is reported as temporary: the retry may deliver a second copy,
//! never none.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use postrider_smtp::client::{OutboundMessage, RcptOutcome, RcptResult};
use postrider_smtp::reply::Reply;

/// Longest mailbox name (a local part may be 64 octets, RFC 5321 section 4.5.3.1.1).
const MAX_NAME: usize = 64;

/// The mailbox directory name for `address`: its local part in lower case, when it is made
/// only of characters that are safe and unambiguous as a file name (ASCII letters, digits,
/// `.`, `-`, `_`, `+`, `=`), does not start with `.` and has at most 64 of them; `None`
/// otherwise (a quoted local part, `/`, non-ASCII), which the route refuses.
pub fn mailbox_name(address: &str) -> Option<String> {
    let (local, _) = address.rsplit_once('@')?;
    let ok = !local.is_empty()
        && local.len() <= MAX_NAME
        && !local.starts_with('.')
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+=".contains(&b));
    ok.then(|| local.to_ascii_lowercase())
}

/// A new unique file name, as Maildir readers expect: `SECONDS.MmicrosPpidQn.HOST`, with `/`
/// and `:` of the host name escaped as the convention says.
fn unique_name(host: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let host = host.replace('/', "\\057").replace(':', "\\072");
    format!(
        "{}.M{}P{}Q{}.{host}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes the file's content: `Return-Path` and `Delivered-To` on top (RFC 5321 section 4.4:
/// final delivery records the reverse path), then the message with CRLF turned into the LF
/// line ends of Unix mailbox files, straight from the message (no copy of it).
fn write_content(
    out: &mut dyn Write,
    from: &str,
    recipient: &str,
    data: &[u8],
) -> std::io::Result<()> {
    write!(out, "Return-Path: <{from}>\nDelivered-To: {recipient}\n")?;
    let mut rest = data;
    while let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
        out.write_all(&rest[..i])?;
        out.write_all(b"\n")?;
        rest = &rest[i + 2..];
    }
    out.write_all(rest)
}

/// Creates `dir` (owner-only) and its parents if missing, syncing the parent of each
/// directory it creates, so a mailbox made for a delivery survives a crash with it.
fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(parent) = parent {
        ensure_dir(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        // Another delivery made it meanwhile: it syncs the parent.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::File::open(parent.unwrap_or(Path::new(".")))?.sync_all()
}

/// Writes one copy into the Maildir `mailbox`: tmp/NAME (created exclusively, owner-only) by
/// `fill`, synced, renamed to new/NAME, new/ synced. Returns the path in new/.
fn write_message(
    mailbox: &Path,
    host: &str,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<PathBuf> {
    for sub in ["tmp", "new", "cur"] {
        ensure_dir(&mailbox.join(sub))?;
    }
    let name = unique_name(host);
    let tmp = mailbox.join("tmp").join(&name);
    let new = mailbox.join("new").join(&name);
    let written = (|| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut writer = std::io::BufWriter::with_capacity(64 * 1024, &file);
        fill(&mut writer)?;
        writer.flush()?;
        drop(writer);
        file.sync_all()?;
        std::fs::rename(&tmp, &new)?;
        std::fs::File::open(mailbox.join("new"))?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(new)
}

/// The outcome of a failed write: a full disk or quota is "mailbox full", anything else a
/// local error; both temporary, so the queue retries.
fn io_failure(e: &std::io::Error) -> RcptResult {
    // ENOSPC (28) and EDQUOT (122 on Linux).
    if matches!(e.raw_os_error(), Some(28 | 122)) {
        RcptResult::Temporary(Reply::local(452, (4, 2, 2), "Mailbox full"))
    } else {
        RcptResult::Temporary(Reply::local(
            451,
            (4, 3, 0),
            &format!("Maildir delivery failed: {e}"),
        ))
    }
}

/// Delivers a copy of `data` (CRLF line ends) to each recipient's mailbox under `root`, in
/// order; blocking file I/O (run it off the async threads).
pub fn deliver(root: &Path, host: &str, msg: &OutboundMessage, data: &[u8]) -> Vec<RcptOutcome> {
    msg.recipients
        .iter()
        .map(|r| {
            let result = match mailbox_name(&r.address) {
                None => RcptResult::Permanent(Reply::local(
                    550,
                    (5, 1, 3),
                    "Recipient local part cannot name a mailbox",
                )),
                Some(name) => {
                    let fill = |w: &mut dyn Write| write_content(w, &msg.from, &r.address, data);
                    match write_message(&root.join(name), host, fill) {
                        Ok(path) => RcptResult::Accepted(Reply::local(
                            250,
                            (2, 0, 0),
                            &format!("Delivered to {}", path.display()),
                        )),
                        Err(e) => io_failure(&e),
                    }
                }
            };
            RcptOutcome {
                recipient: r.address.clone(),
                result,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postrider_smtp::client::OutboundRecipient;

    #[test]
    fn only_plain_local_parts_name_a_mailbox() {
        assert_eq!(
            mailbox_name("PostMaster@localhost").as_deref(),
            Some("postmaster")
        );
        assert_eq!(
            mailbox_name("a.b-c_d+e=f@x").as_deref(),
            Some("a.b-c_d+e=f")
        );
        for bad in [
            "../etc@x",
            ".hidden@x",
            "a/b@x",
            "\"a b\"@x",
            "@x",
            "nodomain",
            "é@x",
            "a\0b@x",
        ] {
            assert_eq!(mailbox_name(bad), None, "{bad:?}");
        }
        assert!(mailbox_name(&format!("{}@x", "a".repeat(64))).is_some());
        assert!(mailbox_name(&format!("{}@x", "a".repeat(65))).is_none());
    }

    #[test]
    fn content_has_return_path_and_lf_line_ends() {
        let content = |from: &str, data: &[u8]| {
            let mut out = Vec::new();
            write_content(&mut out, from, "r@y", data).unwrap();
            out
        };
        assert_eq!(
            content("s@x", b"Subject: a\r\n\r\nline\rwith CR\r\nend"),
            b"Return-Path: <s@x>\nDelivered-To: r@y\nSubject: a\n\nline\rwith CR\nend".to_vec()
        );
        assert!(content("", b"").starts_with(b"Return-Path: <>\n"));
    }

    #[test]
    fn names_are_unique_and_escape_the_host() {
        let (a, b) = (unique_name("mx/1:2"), unique_name("mx/1:2"));
        assert_ne!(a, b);
        assert!(a.ends_with(".mx\\0571\\0722"), "{a}");
        assert!(!a.contains('/'));
    }

    #[test]
    fn delivers_one_file_per_recipient_into_new() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let rcpt = |a: &str| OutboundRecipient {
            address: a.into(),
            notify: None,
            orcpt: None,
        };
        let msg = OutboundMessage {
            from: "s@x".into(),
            recipients: vec![rcpt("Bob@x"), rcpt("../evil@x"), rcpt("bob@x")],
            size: 10,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            require_tls: false,
        };
        let out = deliver(root.path(), "mx", &msg, b"Subject: t\r\n\r\nhi\r\n");
        assert!(matches!(out[0].result, RcptResult::Accepted(_)), "{out:?}");
        assert!(matches!(out[1].result, RcptResult::Permanent(_)), "{out:?}");
        assert!(matches!(out[2].result, RcptResult::Accepted(_)), "{out:?}");
        let new: Vec<_> = std::fs::read_dir(root.path().join("bob/new"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(new.len(), 2);
        assert_eq!(
            std::fs::read_dir(root.path().join("bob/tmp"))
                .unwrap()
                .count(),
            0
        );
        let text = std::fs::read_to_string(&new[0]).unwrap();
        assert!(
            text.starts_with("Return-Path: <s@x>\nDelivered-To: "),
            "{text}"
        );
        assert!(text.ends_with("\n\nhi\n"), "{text}");
        let mode = std::fs::metadata(&new[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(root.path().join("bob"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(!root.path().join("evil").exists());
    }

    #[test]
    fn a_write_failure_is_temporary() {
        let root = tempfile::tempdir().unwrap();
        // A file where the mailbox directory should be.
        std::fs::write(root.path().join("bob"), b"").unwrap();
        let msg = OutboundMessage {
            from: String::new(),
            recipients: vec![OutboundRecipient {
                address: "bob@x".into(),
                notify: None,
                orcpt: None,
            }],
            size: 1,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            require_tls: false,
        };
        let out = deliver(root.path(), "mx", &msg, b"x");
        assert!(
            matches!(&out[0].result, RcptResult::Temporary(r) if r.code() == 451),
            "{out:?}"
        );
    }
}
