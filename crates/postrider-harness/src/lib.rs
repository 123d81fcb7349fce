//! The Postrider plugin test harness: runs a plugin component through the relay's own plugin
//! host ([`postrider_plugin_host`]) against TOML case files ([`case`]), with mocked DNS, a
//! preset in-memory kv store, a fixed clock and mocked network peers ([`mocks`]), and compares what happened with what each
//! case expects ([`runner`], [`report`]). [`transcript`] plays an SMTP dialogue against a
//! plugin through the relay's SMTP state machine, to explore a plugin by hand.
//!
//! The binary is `postrider-harness`; see `plugins/README.md` for the case format.

pub mod case;
pub mod mocks;
pub mod policy;
pub mod report;
pub mod runner;
pub mod transcript;
