//! Appends a disclaimer (or any footer) to outgoing mail as a text/plain part of its own, at
//! the data stage, through the host's `append-text`: the host adds the part (a
//! multipart/mixed message gets one more part, any other message becomes multipart/mixed with
//! its body as the first part), so the original parts' bytes are not touched.
//!
//! Config, under the plugin's `[[plugin]]` entry:
//!
//! ```toml
//! [plugin.config]
//! text = "--\nThis message is confidential."   # the footer (required, at most 64 KiB)
//! only_authenticated = true    # default: only mail from authenticated senders (submission)
//! skip_header = "X-No-Disclaimer"   # a message with this header gets none (optional)
//! ```
//!
//! Every message that gets the footer is also stamped `X-Disclaimer: added`; when the host
//! refuses the text the message goes on unchanged and the plugin logs why.

use postrider_plugin::{
    Config, Connection, DataOutcome, Envelope, HeaderEdit, Message, Plugin, Stages,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    text: String,
    #[serde(default = "yes")]
    only_authenticated: bool,
    #[serde(default)]
    skip_header: Option<String>,
}

fn yes() -> bool {
    true
}

/// The plugin: its checked config.
#[derive(Debug)]
struct Disclaimer {
    text: String,
    only_authenticated: bool,
    skip_header: Option<String>,
}

fn parse_config(config: &Config) -> Result<Disclaimer, String> {
    let raw: RawConfig = config.parse()?;
    if raw.text.trim().is_empty() || raw.text.len() > 64 * 1024 || raw.text.contains('\0') {
        return Err("disclaimer: `text` must be 1 byte to 64 KiB, without NUL".into());
    }
    if let Some(h) = &raw.skip_header
        && (h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
    {
        return Err("disclaimer: `skip_header` must be a header name".into());
    }
    Ok(Disclaimer {
        text: raw.text,
        only_authenticated: raw.only_authenticated,
        skip_header: raw.skip_header,
    })
}

impl Disclaimer {
    /// Whether this message gets the footer: who sent it, and the opt-out header.
    fn wanted(&self, authenticated: bool, has_skip_header: bool) -> bool {
        (authenticated || !self.only_authenticated) && !has_skip_header
    }
}

impl Plugin for Disclaimer {
    fn init(config: &Config) -> Result<Self, String> {
        parse_config(config)
    }

    fn stages(&self) -> Stages {
        Stages::DATA
    }

    fn on_data(&mut self, conn: &Connection, _env: &Envelope, msg: &Message) -> DataOutcome {
        let skip = self
            .skip_header
            .as_deref()
            .is_some_and(|h| !msg.header(h).is_empty());
        if !self.wanted(conn.is_authenticated(), skip) {
            return DataOutcome::default();
        }
        match msg.append_text(&self.text) {
            Ok(()) => DataOutcome::edits(vec![HeaderEdit::append("X-Disclaimer", "added")]),
            Err(e) => {
                postrider_plugin::log::warn(format!("footer refused by the host: {e}"));
                DataOutcome::default()
            }
        }
    }
}

postrider_plugin::export!(Disclaimer);

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<Disclaimer, String> {
        parse_config(&Config::new(json))
    }

    #[test]
    fn config_is_checked() {
        let d = cfg(r#"{"text": "-- \nbye"}"#).unwrap();
        assert!(d.only_authenticated && d.skip_header.is_none());
        assert!(cfg("{}").is_err());
        assert!(cfg(r#"{"text": "  "}"#).is_err());
        assert!(cfg(r#"{"text": "x", "skip_header": "Bad Name"}"#).is_err());
        assert!(cfg(r#"{"text": "x", "colour": "red"}"#).is_err());
    }

    #[test]
    fn who_gets_the_footer() {
        let d = cfg(r#"{"text": "x", "skip_header": "X-No-Disclaimer"}"#).unwrap();
        assert!(d.wanted(true, false));
        assert!(!d.wanted(false, false));
        assert!(!d.wanted(true, true));
        let all = cfg(r#"{"text": "x", "only_authenticated": false}"#).unwrap();
        assert!(all.wanted(false, false));
    }
}
