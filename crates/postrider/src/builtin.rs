//! Plugins built into the relay binary, for `path = "builtin:NAME"`: the embedded default's
//! chain works with no plugin files installed. The components are built reproducibly by
//! `config/plugins/build.sh` from `plugins/` and checked in next to it.

/// Each builtin plugin: its name and its component.
const BUILTINS: &[(&str, &[u8])] = &[
    (
        "header-stamp",
        include_bytes!("../../../config/plugins/header-stamp.wasm"),
    ),
    (
        "rate-limit",
        include_bytes!("../../../config/plugins/rate-limit.wasm"),
    ),
];

/// The component of the builtin plugin `name`, or an error naming the ones there are.
pub fn component(name: &str) -> anyhow::Result<&'static [u8]> {
    BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
        .ok_or_else(|| {
            let names: Vec<_> = BUILTINS.iter().map(|(n, _)| *n).collect();
            anyhow::anyhow!(
                "no builtin plugin {name:?}: the builtins are {}",
                names.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_components_and_unknown_names_say_which_exist() {
        for (name, bytes) in BUILTINS {
            assert!(bytes.starts_with(b"\0asm\x0d\x00\x01\x00"), "{name}");
        }
        let err = component("greylist").unwrap_err().to_string();
        assert_eq!(
            err,
            "no builtin plugin \"greylist\": the builtins are header-stamp, rate-limit"
        );
    }
}
