//! `postrider kv`: an operator's view of a plugin's kv entries (its namespace is its name),
//! through the running relay's admin socket or, with the relay stopped, the store itself.

use postrider_kv::{KvEntry, KvStore};
use serde::{Deserialize, Serialize};

/// Most entries one `kv list` shows.
pub const MAX_LIST: usize = 10_000;

/// A `postrider kv` action (also the `kv` request of the admin socket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Subcommand)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum KvRequest {
    /// List a plugin's live entries (key, expiry, value), sorted by key.
    List {
        /// The plugin's name in the config (its kv namespace).
        plugin: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many entries (up to 10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Remove one entry of a plugin (e.g. a greylist triplet or a rate-limit counter).
    Delete {
        /// The plugin's name in the config (its kv namespace).
        plugin: String,
        /// The key, exactly as `kv list` shows it.
        key: String,
    },
}

/// One entry as `kv list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The key.
    pub key: String,
    /// The value as text when it is UTF-8, else `hex:` and its bytes in hex.
    pub value: String,
    /// When it expires (Unix seconds, rounded up), or `None` for never.
    pub expires_at: Option<u64>,
}

impl From<KvEntry> for Item {
    fn from(e: KvEntry) -> Item {
        let value = match String::from_utf8(e.value) {
            Ok(text) => text,
            Err(bytes) => {
                let hex: String = bytes
                    .as_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("hex:{hex}")
            }
        };
        Item {
            key: e.key,
            value,
            expires_at: e.expires_at_ms.map(|ms| ms.div_ceil(1000)),
        }
    }
}

impl KvRequest {
    /// The plugin (kv namespace) the request is about.
    pub fn plugin(&self) -> &str {
        match self {
            KvRequest::List { plugin, .. } | KvRequest::Delete { plugin, .. } => plugin,
        }
    }
}

/// What a kv request answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `list`: the entries, sorted by key.
    Entries(Vec<Item>),
    /// `delete`: whether a live entry existed.
    Deleted(bool),
}

/// Runs `request` against `store`.
pub async fn run(store: &dyn KvStore, request: &KvRequest) -> Result<Answer, String> {
    let result = match request {
        KvRequest::List {
            plugin,
            prefix,
            limit,
        } => store
            .list(plugin, prefix, (*limit).min(MAX_LIST))
            .await
            .map(|entries| Answer::Entries(entries.into_iter().map(Item::from).collect())),
        KvRequest::Delete { plugin, key } => store.delete(plugin, key).await.map(Answer::Deleted),
    };
    result.map_err(|e| format!("kv: {e}"))
}

/// Renders `kv list` for people: one line per entry, the value last.
pub fn render(entries: &[Item]) -> String {
    if entries.is_empty() {
        return "no entries\n".to_owned();
    }
    let width = entries
        .iter()
        .map(|e| e.key.len())
        .max()
        .unwrap_or(0)
        .max(3);
    let mut out = format!("{:<width$}  {:<20}  VALUE\n", "KEY", "EXPIRES");
    for e in entries {
        let expires = e.expires_at.map_or_else(
            || "never".to_owned(),
            |secs| {
                chrono::DateTime::<chrono::Utc>::from(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                )
                .format("%Y-%m-%d %H:%M:%SZ")
                .to_string()
            },
        );
        out.push_str(&format!("{:<width$}  {expires:<20}  {}\n", e.key, e.value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_show_as_text_or_hex_and_expiry_rounds_up() {
        let item = Item::from(KvEntry {
            key: "k".into(),
            value: vec![0xff, 0x00],
            expires_at_ms: Some(1_700_000_000_001),
        });
        assert_eq!(item.value, "hex:ff00");
        assert_eq!(item.expires_at, Some(1_700_000_001));
        let text = render(&[
            item,
            Item {
                key: "t:203.0.113.0/24".into(),
                value: "p:1700000301".into(),
                expires_at: None,
            },
        ]);
        assert_eq!(
            text,
            "KEY               EXPIRES               VALUE\n\
             k                 2023-11-14 22:13:21Z  hex:ff00\n\
             t:203.0.113.0/24  never                 p:1700000301\n"
        );
        assert_eq!(render(&[]), "no entries\n");
    }
}
