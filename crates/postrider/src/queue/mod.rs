//! The queue side, along the data path: the [`manager`] schedules spooled messages and
//! delivers them ([`route`] decides where each recipient goes), [`admin`] answers
//! `postrider queue` online and offline, [`tls_reports`] sends the TLS reports.

pub mod admin;
pub mod manager;
pub mod route;
pub mod tls_reports;
