//! The [`Plugin`] trait.

use crate::{
    Config, Connection, DataOutcome, Envelope, Message, RcptOutcome, Route, Stages, Verdict,
};

/// A Postrider filter plugin.
///
/// Implement [`init`](Plugin::init) and [`stages`](Plugin::stages), override the stage methods
/// you asked for, and export the type with [`export!`](crate::export). Every stage method has
/// a default that expresses "no opinion", so a method you do not override is harmless even if
/// its stage is in [`stages`](Plugin::stages):
///
/// | stage | default |
/// |---|---|
/// | [`on_connect`](Plugin::on_connect), [`on_helo`](Plugin::on_helo), [`on_mail_from`](Plugin::on_mail_from) | [`Verdict::Continue`] |
/// | [`on_rcpt`](Plugin::on_rcpt) | continue, no rewrite ([`RcptOutcome::default`]) |
/// | [`on_data`](Plugin::on_data) | continue, no header edits, no quarantine ([`DataOutcome::default`]) |
/// | [`on_route`](Plugin::on_route) | [`Route::Mx`] |
///
/// The value returned by `init` lives for one instance: one SMTP transaction (all its stages,
/// in order) or one routing call. Use fields for per-transaction state and [`kv`](crate::kv)
/// for anything that must outlive it.
///
/// Connection and envelope are passed by reference; clone what you need to keep.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its config table (the `config = { ... }` of its `[[plugin]]`
    /// entry in the relay's TOML, as JSON).
    ///
    /// Called in every new instance before its first stage, and once at load to validate the
    /// config: return `Err` with a clear message (which field, what is wrong) for a bad or
    /// missing field and the relay refuses to load (or reload) the plugin with that message.
    /// [`Config::parse`] deserializes into any `serde` type and words its errors for you.
    ///
    /// Keep it cheap: it runs once per transaction. Do not call [`kv`](crate::kv) or
    /// [`dns`](crate::dns) here.
    fn init(config: &Config) -> Result<Self, String>;

    /// The stages this plugin wants to be called at; the host calls no other (and the plugin
    /// pays for no other). Combine flags with `|`, e.g. `Stages::MAIL_FROM | Stages::RCPT`.
    fn stages(&self) -> Stages;

    /// After the TCP (and, for implicit TLS, TLS) handshake, before the greeting.
    /// A `Reject`/`Disconnect` here refuses the session (e.g. `554 5.7.1`).
    fn on_connect(&mut self, conn: &Connection) -> Verdict {
        let _ = conn;
        Verdict::Continue
    }

    /// On `HELO`/`EHLO`; `helo` is the name the client gave.
    fn on_helo(&mut self, conn: &Connection, helo: &str) -> Verdict {
        let _ = (conn, helo);
        Verdict::Continue
    }

    /// On `MAIL FROM`; `env.mail_from` is the reverse path (`""` for the null sender).
    fn on_mail_from(&mut self, conn: &Connection, env: &Envelope) -> Verdict {
        let _ = (conn, env);
        Verdict::Continue
    }

    /// On each `RCPT TO`; `rcpt` is the recipient being asked about (not yet in
    /// `env.recipients`). The outcome may rewrite the address with accept or continue.
    fn on_rcpt(&mut self, conn: &Connection, env: &Envelope, rcpt: &str) -> RcptOutcome {
        let _ = (conn, env, rcpt);
        RcptOutcome::default()
    }

    /// After the message is received (end of `DATA`/last `BDAT`), before the final reply.
    /// Read what you need from `msg` (headers are fetched on demand); return header edits,
    /// a verdict, or a quarantine reason.
    fn on_data(&mut self, conn: &Connection, env: &Envelope, msg: &Message) -> DataOutcome {
        let _ = (conn, env, msg);
        DataOutcome::default()
    }

    /// Called by the queue manager for each recipient of a spooled message: where it goes.
    fn on_route(&mut self, conn: &Connection, env: &Envelope, rcpt: &str) -> Route {
        let _ = (conn, env, rcpt);
        Route::Mx
    }
}
