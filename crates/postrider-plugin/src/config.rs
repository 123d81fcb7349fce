//! The plugin's config table.

use serde::de::DeserializeOwned;

/// The plugin's config table, as the JSON text the host passes to `init`.
///
/// In the relay's TOML it is the `config` of the plugin's entry:
///
/// ```toml
/// [[plugin]]
/// name = "greylist"
/// path = "plugins/greylist.wasm"
/// config = { delay_seconds = 300, skip_networks = ["10.0.0.0/8"] }
/// ```
///
/// An empty text or JSON `null` (no `config` given) reads as the empty table `{}`, so a struct
/// whose fields all have defaults parses from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    json: String,
}

impl Config {
    /// Wraps config JSON text (what the host passed).
    pub fn new(json: impl Into<String>) -> Self {
        let json = json.into();
        let trimmed = json.trim();
        let json = if trimmed.is_empty() || trimmed == "null" {
            "{}".to_owned()
        } else {
            json
        };
        Config { json }
    }

    /// The JSON text (`{}` when the host passed none).
    pub fn as_str(&self) -> &str {
        &self.json
    }

    /// Deserializes the config into `T`.
    ///
    /// The error is one line naming the problem and its place, ready to return from
    /// [`Plugin::init`](crate::Plugin::init), e.g.
    /// ``invalid config: missing field `zones` at line 1 column 2``. Use
    /// `#[serde(deny_unknown_fields)]` on `T` to catch misspelt keys.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.json).map_err(|e| format!("invalid config: {e}"))
    }

    /// The config as a generic JSON value, for plugins that walk it by hand.
    pub fn value(&self) -> Result<serde_json::Value, String> {
        self.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct T {
        #[serde(default)]
        n: u32,
    }

    #[test]
    fn empty_and_null_are_empty_table() {
        for text in ["", "  ", "null"] {
            let t: T = Config::new(text).parse().unwrap();
            assert_eq!(t.n, 0);
        }
    }

    #[test]
    fn errors_are_worded() {
        let err = Config::new(r#"{"m": 1}"#).parse::<T>().unwrap_err();
        assert!(
            err.starts_with("invalid config: unknown field `m`"),
            "{err}"
        );
        let err = Config::new(r#"{"n": "x"}"#).parse::<T>().unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
    }
}
