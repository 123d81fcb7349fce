//! rspamd's `/checkv2` protocol, sans-IO: the request headers for a message and what its
//! JSON answer means for the message.

use serde::Deserialize;
use std::collections::BTreeMap;

/// rspamd's answer (the fields used; others are ignored).
#[derive(Debug, Deserialize, PartialEq)]
pub struct Reply {
    /// The action rspamd chose: "no action", "greylist", "add header", "rewrite subject",
    /// "soft reject" or "reject".
    pub action: String,
    /// The message's score.
    #[serde(default)]
    pub score: f64,
    /// The score at which rspamd rejects.
    #[serde(default)]
    pub required_score: f64,
    /// The symbols that matched, by name.
    #[serde(default)]
    pub symbols: BTreeMap<String, serde_json::Value>,
    /// The new subject, with "rewrite subject".
    #[serde(default)]
    pub subject: Option<String>,
    /// Header changes rspamd asks for (its milter block).
    #[serde(default)]
    pub milter: Option<Milter>,
    /// rspamd stopped checking early (GTUBE, settings, too big); its action still holds.
    #[serde(default)]
    pub is_skipped: bool,
    /// Texts for the SMTP reply.
    #[serde(default)]
    pub messages: Option<Messages>,
}

/// rspamd's reply texts.
#[derive(Debug, Deserialize, PartialEq, Default)]
pub struct Messages {
    /// The text rspamd wants in the SMTP reply.
    #[serde(default)]
    pub smtp_message: Option<String>,
}

/// rspamd's header changes.
#[derive(Debug, Deserialize, PartialEq, Default)]
pub struct Milter {
    /// Headers to add: name → value (a string, or `{"value": ..}`, or a list of those).
    #[serde(default)]
    pub add_headers: BTreeMap<String, serde_json::Value>,
    /// Headers to remove, by name.
    #[serde(default)]
    pub remove_headers: BTreeMap<String, serde_json::Value>,
}

/// What to do with the message.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Deliver, with these header changes.
    Accept(Vec<Edit>),
    /// Refuse permanently: code, enhanced code, text.
    Reject(u16, &'static str, String),
    /// Refuse for now: code, enhanced code, text.
    Tempfail(u16, &'static str, String),
}

/// One header change.
#[derive(Debug, PartialEq)]
pub enum Edit {
    /// Add a header at the end of the block.
    Add(String, String),
    /// Remove every header of this name.
    Remove(String),
}

/// Parses rspamd's JSON answer.
pub fn parse(body: &[u8]) -> Result<Reply, String> {
    serde_json::from_slice(body).map_err(|e| format!("rspamd answered no valid JSON: {e}"))
}

/// Printable ASCII only, at most `max` bytes: what goes into an SMTP reply or a header.
fn clean(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                ' '
            }
        })
        .take(max)
        .collect()
}

fn header_values(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Object(o) => o
            .get("value")
            .and_then(|v| v.as_str())
            .map(|s| vec![s.to_owned()])
            .unwrap_or_default(),
        serde_json::Value::Array(a) => a.iter().flat_map(header_values).collect(),
        _ => Vec::new(),
    }
}

/// What rspamd's answer means for the message.
pub fn decide(reply: &Reply, original_subject: Option<&str>) -> Decision {
    let text = |default: &str| {
        let given = reply
            .messages
            .as_ref()
            .and_then(|m| m.smtp_message.as_deref())
            .map(|m| clean(m, 200));
        given
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    match reply.action.as_str() {
        "reject" => return Decision::Reject(550, "5.7.1", text("Spam message rejected")),
        "soft reject" => return Decision::Tempfail(451, "4.7.1", text("Try again later")),
        "greylist" => {
            return Decision::Tempfail(451, "4.7.1", text("Greylisted, please try again later"));
        }
        _ => {}
    }
    if reply.is_skipped {
        return Decision::Accept(vec![Edit::Add("X-Spam-Action".into(), "skipped".into())]);
    }
    let mut edits = Vec::new();
    let names: Vec<&str> = reply.symbols.keys().map(String::as_str).collect();
    edits.push(Edit::Add(
        "X-Spam-Score".into(),
        format!("{:.2} / {:.2}", reply.score, reply.required_score),
    ));
    edits.push(Edit::Add("X-Spam-Action".into(), clean(&reply.action, 40)));
    if !names.is_empty() {
        edits.push(Edit::Add(
            "X-Spam-Symbols".into(),
            clean(&names.join(", "), 900),
        ));
    }
    match reply.action.as_str() {
        "add header" => edits.push(Edit::Add("X-Spam".into(), "Yes".into())),
        "rewrite subject" => {
            let subject = match &reply.subject {
                Some(s) => clean(s, 900),
                None => format!(
                    "*** SPAM *** {}",
                    clean(original_subject.unwrap_or(""), 880)
                ),
            };
            edits.push(Edit::Remove("Subject".into()));
            edits.push(Edit::Add("Subject".into(), subject));
        }
        _ => {}
    }
    if let Some(m) = &reply.milter {
        for name in m.remove_headers.keys() {
            edits.push(Edit::Remove(clean(name, 100)));
        }
        for (name, v) in &m.add_headers {
            for value in header_values(v) {
                edits.push(Edit::Add(clean(name, 100), clean(&value, 900)));
            }
        }
    }
    Decision::Accept(edits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_and_temporary_actions_refuse_the_message() {
        let r = parse(br#"{"action":"reject","score":1001.0,"required_score":15.0}"#).unwrap();
        assert_eq!(
            decide(&r, None),
            Decision::Reject(550, "5.7.1", "Spam message rejected".into())
        );
        // GTUBE, as rspamd 3.4 answers it: skipped, and rejected with its own text.
        let r = parse(br#"{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0}},"messages":{"smtp_message":"Gtube pattern"}}"#).unwrap();
        assert_eq!(
            decide(&r, None),
            Decision::Reject(550, "5.7.1", "Gtube pattern".into())
        );
        for action in ["soft reject", "greylist"] {
            let r = parse(format!(r#"{{"action":"{action}"}}"#).as_bytes()).unwrap();
            assert!(matches!(
                decide(&r, None),
                Decision::Tempfail(451, "4.7.1", _)
            ));
        }
    }

    #[test]
    fn other_actions_add_headers() {
        let r = parse(
            br#"{"action":"no action","score":1.5,"required_score":15,"symbols":{"B":{},"A":{}}}"#,
        )
        .unwrap();
        assert_eq!(
            decide(&r, None),
            Decision::Accept(vec![
                Edit::Add("X-Spam-Score".into(), "1.50 / 15.00".into()),
                Edit::Add("X-Spam-Action".into(), "no action".into()),
                Edit::Add("X-Spam-Symbols".into(), "A, B".into()),
            ])
        );
        let r = parse(br#"{"action":"rewrite subject","milter":{"add_headers":{"X-Virus":{"value":"no\r\nBcc: x","order":0}},"remove_headers":{"X-Spam-Flag":1}}}"#).unwrap();
        let Decision::Accept(edits) = decide(&r, Some("hello")) else {
            panic!()
        };
        assert!(edits.contains(&Edit::Add("Subject".into(), "*** SPAM *** hello".into())));
        assert!(edits.contains(&Edit::Remove("X-Spam-Flag".into())));
        assert!(edits.contains(&Edit::Add("X-Virus".into(), "no  Bcc: x".into())));
    }

    #[test]
    fn garbage_is_an_error_and_skipped_messages_say_so() {
        assert!(parse(b"<html>").is_err());
        assert!(parse(br#"{"score":1}"#).is_err());
        let r = parse(br#"{"action":"no action","is_skipped":true}"#).unwrap();
        assert_eq!(
            decide(&r, None),
            Decision::Accept(vec![Edit::Add("X-Spam-Action".into(), "skipped".into())])
        );
    }
}
