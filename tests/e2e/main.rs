//! End-to-end tests: each starts the real `postrider` binary on free loopback ports and
//! talks SMTP to it over TCP with real clients (this crate's raw client, swaks, Python's
//! smtplib), then inspects the spool the binary wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly on purpose

mod harness;

mod cli;
mod default_setup;
mod delivery;
mod dnssec;
mod durability;
mod email_auth;
mod front_door;
mod hostile;
mod limits;
mod milters;
mod mta_sts;
mod operating;
mod outbound_tls;
mod peers;
mod plugins;
mod policy_daemons;
mod polyglot;
mod queue_cli;
mod redis;
mod relay_control;
mod reload;
mod routing;
mod smtp;
mod smuggling;
mod stage_parity;
mod tls_auth;
