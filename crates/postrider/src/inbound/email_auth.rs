//! Email authentication in the relay: SPF at MAIL FROM, DKIM/ARC/DMARC at the end of DATA
//! for mail from untrusted clients (with an `Authentication-Results` header and optional
//! DMARC enforcement), DKIM signing of mail from our own users and ARC sealing of verified
//! mail. The checks themselves are `postrider-auth`'s (mail-auth); this module decides when
//! to run them, bounds them in time and hands the results to plugins and the spool.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use postrider_auth::{
    ArcSealer, AuthOutcome, AuthResult, DkimSigner, DkimSignerConfig, DmarcPolicy, Signers,
    SpfOutcome, Verifier,
};
use postrider_config::{Authentication, SigningKey};
use postrider_plugin_host::{self as host, TokioResolver};
use tracing::warn;

/// One generation's email authentication: verifier, signing keys and settings.
pub struct EmailAuth {
    verifier: Verifier,
    verify: bool,
    signers: Signers,
    sealer: Option<ArcSealer>,
    dmarc_enforce: bool,
    timeout: Duration,
}

/// What DMARC enforcement says about a message.
pub enum DmarcAction {
    /// Go on.
    Accept,
    /// Quarantine, with this reason.
    Quarantine(String),
    /// Refuse with 550 5.7.1 and this text.
    Reject(String),
}

impl EmailAuth {
    /// Loads the signing keys (errors name the file) and builds the verifier on `resolver`.
    pub fn load(config: &Authentication, resolver: TokioResolver) -> anyhow::Result<EmailAuth> {
        let signers = config
            .dkim_sign
            .iter()
            .enumerate()
            .map(|(i, key)| {
                DkimSigner::load(&signer_config(key))
                    .with_context(|| format!("dkim_sign[{i}] ({})", key.domain))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sealer = match &config.arc_seal {
            Some(key) => Some(
                ArcSealer::load(&signer_config(key), config.authserv_id.clone())
                    .context("authentication.arc_seal")?,
            ),
            None => None,
        };
        Ok(EmailAuth {
            verifier: Verifier::new(resolver, config.authserv_id.clone()),
            verify: config.verify,
            signers: Signers::new(signers),
            sealer,
            dmarc_enforce: config.dmarc_enforce,
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    /// Our authserv-id: incoming `Authentication-Results` claiming it are removed.
    pub fn authserv_id(&self) -> &str {
        self.verifier.authserv_id()
    }

    /// Whether mail from this client is verified: verification is on and the client is
    /// neither authenticated nor in `relay_networks`.
    pub fn verifies(&self, trusted_client: bool) -> bool {
        self.verify && !trusted_client
    }

    /// SPF of the HELO and the MAIL FROM identities, checked concurrently, each bounded by the
    /// timeout (past it: `temperror`).
    pub async fn spf(
        &self,
        ip: IpAddr,
        helo: &str,
        host_name: &str,
        mail_from: &str,
    ) -> (SpfOutcome, SpfOutcome) {
        let from_domain = mail_from.rsplit_once('@').map_or(helo, |(_, d)| d);
        // The two checks are independent: run them together, so a slow resolver costs one
        // timeout, not two.
        let (helo_check, from_check) = tokio::join!(
            tokio::time::timeout(self.timeout, self.verifier.spf_helo(ip, helo, host_name)),
            tokio::time::timeout(
                self.timeout,
                self.verifier.spf_mail_from(ip, helo, host_name, mail_from),
            ),
        );
        let helo_check = helo_check.unwrap_or_else(|_| SpfOutcome::temperror(helo));
        let from_check = from_check.unwrap_or_else(|_| SpfOutcome::temperror(from_domain));
        (helo_check, from_check)
    }

    /// DKIM, ARC and DMARC of a received message; `None` when they did not finish in time.
    pub async fn verify_message(
        &self,
        raw: &[u8],
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
        spf: &SpfOutcome,
    ) -> Option<AuthOutcome> {
        match tokio::time::timeout(
            self.timeout,
            self.verifier.verify_message(raw, ip, helo, mail_from, spf),
        )
        .await
        {
            Ok(outcome) => Some(outcome),
            Err(_) => {
                warn!(
                    timeout_ms = self.timeout.as_millis() as u64,
                    "DKIM/ARC/DMARC verification timed out"
                );
                None
            }
        }
    }

    /// The verifier, for the `Authentication-Results` header of its results.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// What DMARC enforcement (when on) does with a verified message.
    pub fn dmarc_action(&self, outcome: &AuthOutcome) -> DmarcAction {
        if !self.dmarc_enforce {
            return DmarcAction::Accept;
        }
        let domain = &outcome.dmarc.from_domain;
        match outcome.dmarc.action() {
            DmarcPolicy::None => DmarcAction::Accept,
            DmarcPolicy::Quarantine => {
                DmarcAction::Quarantine(format!("DMARC policy of {domain}: quarantine"))
            }
            DmarcPolicy::Reject => {
                DmarcAction::Reject(format!("Message rejected by the DMARC policy of {domain}"))
            }
        }
    }

    /// The DKIM-Signature header for a message from one of our users, when its From domain
    /// has a signing key; a signing error is logged and the message goes unsigned.
    pub fn sign(&self, message: &[u8]) -> Option<String> {
        let signer = self.signers.for_message(message)?;
        match signer.sign(message) {
            Ok(header) => Some(header),
            Err(e) => {
                warn!(domain = signer.domain(), error = %e, "DKIM signing failed; sent unsigned");
                None
            }
        }
    }

    /// The ARC set for a verified message, when sealing is configured; a chain that cannot
    /// be extended (or an error) leaves the message unsealed.
    pub fn seal(
        &self,
        message: &[u8],
        spf_helo: Option<&SpfOutcome>,
        outcome: &AuthOutcome,
    ) -> Option<String> {
        let sealer = self.sealer.as_ref()?;
        match sealer.seal(message, spf_helo, outcome) {
            Ok(headers) => Some(headers),
            Err(e) => {
                warn!(error = %e, "ARC sealing skipped");
                None
            }
        }
    }
}

fn signer_config(key: &SigningKey) -> DkimSignerConfig {
    let mut cfg = DkimSignerConfig::new(&key.domain, &key.selector, &key.key_file);
    if !key.headers.is_empty() {
        cfg.headers = key.headers.clone();
    }
    cfg
}

/// The plugin interface's name for a result.
pub fn wit_result(r: AuthResult) -> host::AuthResult {
    match r {
        AuthResult::None => host::AuthResult::None,
        AuthResult::Pass => host::AuthResult::Pass,
        AuthResult::Fail => host::AuthResult::Fail,
        AuthResult::SoftFail => host::AuthResult::Softfail,
        AuthResult::Neutral => host::AuthResult::Neutral,
        AuthResult::TempError => host::AuthResult::Temperror,
        AuthResult::PermError => host::AuthResult::Permerror,
        AuthResult::Policy => host::AuthResult::Policy,
    }
}

/// SPF as plugins see it.
pub fn spf_check(spf: &SpfOutcome) -> host::SpfCheck {
    host::SpfCheck {
        result: wit_result(spf.result),
        domain: spf.domain.clone(),
    }
}

/// DKIM, DMARC and ARC as plugins see them.
pub fn authentication(outcome: &AuthOutcome) -> host::Authentication {
    host::Authentication {
        dkim: outcome
            .dkim
            .iter()
            .map(|d| host::DkimCheck {
                result: wit_result(d.result),
                domain: d.domain.clone(),
                selector: d.selector.clone(),
            })
            .collect(),
        dmarc: wit_result(outcome.dmarc.result),
        arc: wit_result(outcome.arc),
    }
}

/// Prepends `header` (CRLF-terminated header lines) to `message`.
pub fn prepend(header: &str, message: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + message.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use postrider_queue::SpfRecord;

    /// The spool keeps mail-auth's keywords; the stage driver reads them back.
    #[test]
    fn spf_records_round_trip_every_result() {
        use postrider_stages::spf_from_record;
        for r in AuthResult::ALL {
            let record = SpfRecord {
                result: r.as_str().to_owned(),
                domain: "example.org".into(),
            };
            let check = spf_from_record(&record).unwrap();
            assert_eq!(check.result, wit_result(r));
            assert_eq!(check.domain, "example.org");
        }
        let bad = SpfRecord {
            result: "maybe".into(),
            domain: "example.org".into(),
        };
        assert!(spf_from_record(&bad).is_none());
    }
}
